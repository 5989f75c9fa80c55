"""asrhub: a self-hosted speech-recognition hub."""

__version__ = "0.1.0"
