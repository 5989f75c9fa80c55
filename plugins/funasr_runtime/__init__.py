"""asrhub plugin: FunASR's runtime WebSocket protocol (offline / online / 2pass) on port 10095."""
