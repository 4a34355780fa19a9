"""The gateway: the HTTP API (FastAPI) and the conductor that moves rounds through their stages."""
