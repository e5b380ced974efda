"""Run child processes under a trio nursery with hard guarantees (ACP-agnostic).

- :mod:`supervisor.process`: spawn, watch, read and stop one child process.
- :mod:`supervisor.restart`: the restart policy for crash-looping children.
- :mod:`supervisor.notify`: systemd ``sd_notify`` and the watchdog.
"""

from supervisor.notify import Notifier, run_watchdog, watchdog_interval
from supervisor.process import (
    Child,
    ChildSpec,
    ExitStatus,
    LineTooLong,
    SpawnError,
    StopTimeout,
    run_child,
)
from supervisor.restart import RestartDecision, RestartPolicy, RestartTracker, supervise_restarts

__all__ = [
    "Child",
    "ChildSpec",
    "ExitStatus",
    "LineTooLong",
    "Notifier",
    "RestartDecision",
    "RestartPolicy",
    "RestartTracker",
    "SpawnError",
    "StopTimeout",
    "run_child",
    "run_watchdog",
    "supervise_restarts",
    "watchdog_interval",
]
