"""The proxy's own CPU profiles, pushed to Pyroscope (the optional `profiling` extra).

``pip install 'dbproxy[profiling]'`` installs pyroscope-io; with ``PYROSCOPE_SERVER_ADDRESS``
set, the composition root starts its agent (a sampling profiler in a native thread: it
never runs on the event loop) and stops it at shutdown. Without the extra the proxy runs
as usual and says once, at start-up, that profiles are not pushed and why.

The agent is process-global (pyroscope-io keeps one); :class:`Profiler` is the handle the
composition root owns, so nothing else starts or stops it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType

log = logging.getLogger(__name__)

DEFAULT_APPLICATION = "dbproxy"
#: Seconds between uploads (pyroscope-io's default).
UPLOAD_INTERVAL_S = 10


@dataclass(frozen=True, slots=True)
class ProfilingSettings:
    server_address: str
    application_name: str = DEFAULT_APPLICATION
    tags: Mapping[str, str] = field(default_factory=dict)
    #: PYROSCOPE_BASIC_AUTH_USERNAME / _PASSWORD, PYROSCOPE_TENANT_ID (Grafana Cloud)
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    upload_interval_s: int = UPLOAD_INTERVAL_S


def missing_extra_message(server_address: str) -> str:
    return (
        f"PYROSCOPE_SERVER_ADDRESS is set ({server_address}) but the profiling extra is not "
        "installed, so no CPU profiles are pushed: pip install 'dbproxy[profiling]'"
    )


def _import_agent() -> ModuleType:
    import importlib

    return importlib.import_module("pyroscope")  # untyped, and optional


class Profiler:
    """A running pyroscope-io agent."""

    def __init__(self, agent: ModuleType, settings: ProfilingSettings) -> None:
        self._agent = agent
        self.settings = settings

    def stop(self) -> None:
        try:
            self._agent.shutdown()
        except Exception:  # never fatal: profiles are an extra
            log.exception("stopping the Pyroscope agent failed")


def start_profiling(
    settings: ProfilingSettings, *, import_agent: Callable[[], ModuleType] = _import_agent
) -> Profiler | None:
    """Start pushing CPU profiles, or say clearly why not (never raises)."""
    try:
        agent = import_agent()
    except ImportError:
        log.warning("%s", missing_extra_message(settings.server_address))
        return None
    env = settings.env
    try:
        agent.configure(
            application_name=settings.application_name,
            server_address=settings.server_address,
            tags=dict(settings.tags),
            upload_interval=settings.upload_interval_s,
            basic_auth_username=env.get("PYROSCOPE_BASIC_AUTH_USERNAME", ""),
            basic_auth_password=env.get("PYROSCOPE_BASIC_AUTH_PASSWORD", ""),
            tenant_id=env.get("PYROSCOPE_TENANT_ID", ""),
        )
    except Exception:
        log.exception("starting the Pyroscope agent failed; no CPU profiles are pushed")
        return None
    tags = ",".join(f"{k}={v}" for k, v in sorted(settings.tags.items()))
    log.info(
        "dbproxy pushing CPU profiles to %s as %s{%s}",
        settings.server_address,
        settings.application_name,
        tags,
    )
    return Profiler(agent, settings)
