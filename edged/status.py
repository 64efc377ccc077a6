"""Runtime state of the long-lived components, as shown by /readyz and the log. Not configuration."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from edged.metrics import Metrics

__all__ = ["ComponentState", "Components", "State"]

log = logging.getLogger(__name__)

State = Literal["starting", "connected", "disconnected", "error", "disabled"]


@dataclass(slots=True)
class ComponentState:
    state: State = "starting"
    detail: str = ""
    since: float = field(default_factory=time.time)


_DOWN = frozenset({"disconnected", "error"})


def _level(old: State | None, new: State) -> int:
    if new == "error" and old != "error":
        return logging.ERROR
    if new in _DOWN and old not in _DOWN:
        return logging.WARNING
    return logging.INFO


class Components:
    """Named component states; every change is logged once and, given the daemon's metrics, shown as
    ``edged_component_up`` (1 while connected). Going down is a WARNING (refused: an ERROR) when it
    happens; a new reason while still down is INFO, so ``journalctl -p warning`` shows each outage once."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._states: dict[str, ComponentState] = {}
        self._metrics = metrics

    def set(self, name: str, state: State, detail: str = "") -> None:
        old = self._states.get(name)
        if old is not None and old.state == state and old.detail == detail:
            return
        self._states[name] = ComponentState(state, detail)
        if self._metrics is not None:
            self._metrics.component_up.labels(name).set(1 if state == "connected" else 0)
        log.log(_level(old.state if old is not None else None, state), "%s: %s%s", name, state,
                f" ({detail})" if detail else "", extra={"COMPONENT": name})

    def get(self, name: str) -> ComponentState | None:
        return self._states.get(name)

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {
            name: {"state": s.state, "detail": s.detail, "since": round(s.since, 3)}
            for name, s in sorted(self._states.items())
        }
