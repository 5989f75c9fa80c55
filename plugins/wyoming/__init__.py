"""asrhub plugin: the Wyoming protocol (Home Assistant's voice pipeline) on TCP port 10300."""
