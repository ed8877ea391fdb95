"""``--workers N``: several processes accept on one port (SO_REUSEPORT); worker 0
supervises the others and serves the one HTTP server with their merged statistics.

``supervisor.py`` starts, watches, restarts and stops the worker processes;
``worker.py`` is a worker's entry point; ``channel.py`` is the private Unix-socket
request/answer each worker serves its statistics on; ``merged.py`` is what worker 0's
``/metrics`` and ``/api`` read (its own statistics plus the others', merged per request).
"""
