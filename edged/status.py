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


class Components:
    """Named component states; every change is logged once (errors at ERROR level) and, given the
    daemon's metrics, shown as ``edged_component_up`` (1 while connected)."""

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
        level = logging.ERROR if state == "error" else logging.INFO
        log.log(level, "%s: %s%s", name, state, f" ({detail})" if detail else "")

    def get(self, name: str) -> ComponentState | None:
        return self._states.get(name)

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {
            name: {"state": s.state, "detail": s.detail, "since": round(s.since, 3)}
            for name, s in sorted(self._states.items())
        }
