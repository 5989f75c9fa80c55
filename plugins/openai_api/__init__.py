"""OpenAI-compatible speech API (HTTP transcriptions/translations, Realtime transcription)."""
