"""asrhub plugin: vad_stream."""
