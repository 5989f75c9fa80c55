"""asrhub plugin: ptt."""
