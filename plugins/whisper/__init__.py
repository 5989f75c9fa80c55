"""asrhub plugin: whisper (faster-whisper ASR engine ``whisper``)."""
