"""asrhub plugin: session_broadcast."""
