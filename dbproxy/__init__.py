"""dbproxy: a query-observability proxy for PostgreSQL."""

__version__ = "0.1.0"
