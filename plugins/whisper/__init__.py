"""asrhub plugin: whisper."""
