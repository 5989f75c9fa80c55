"""asrhub plugin: speakers."""
