"""dbproxy: a query-observability proxy for PostgreSQL."""

from dbproxy import speedups as _speedups

__version__ = "0.1.0"

# Use the mypyc-compiled hot modules when a build matching these sources exists
# (see dbproxy/speedups.py); otherwise, and with DBPROXY_PURE_PYTHON=1, pure Python.
_speedups.install()
