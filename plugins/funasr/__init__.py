"""asrhub plugin: funasr."""
