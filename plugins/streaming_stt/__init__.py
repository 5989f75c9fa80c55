"""asrhub plugin: streaming_stt."""
