"""asrhub plugin: vad (Silero VAD engine ``silero``)."""
