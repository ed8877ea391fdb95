"""``dbproxy demo``: throwaway PostgreSQL + shop schema + proxy and web UI + workload."""

from __future__ import annotations

from dbproxy.demo.run import main

__all__ = ["main"]
