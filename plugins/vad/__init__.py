"""asrhub plugin: vad."""
