"""asrhub plugin: denoise."""
