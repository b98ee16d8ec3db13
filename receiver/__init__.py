"""The HTTP edge: ASGI app, auth, validation, intake, health and metrics."""
