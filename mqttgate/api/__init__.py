"""The HTTP API: provisioning, health, metrics, Swagger UI."""
