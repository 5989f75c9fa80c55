"""Shared state for several asrhub instances: the Redis voiceprint store."""
