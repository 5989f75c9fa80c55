"""asrhub plugin: file_transcription."""
