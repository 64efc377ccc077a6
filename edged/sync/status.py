"""How the cloud sync last went: kept by the sync loop, shown by GET /v1/outbox."""

from __future__ import annotations

import time
from dataclasses import dataclass

from edged.metrics import Metrics

__all__ = ["SyncStatus"]


@dataclass(slots=True)
class SyncStatus:
    """The outcome of the latest attempts (unix times)."""

    last_sync_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None

    def note(self, ok: bool, error: str | None, metrics: Metrics | None = None) -> None:
        """Record an attempt (ok: the sidecar accepted something; error: what went wrong, if anything)."""
        now = time.time()
        if ok:
            self.last_sync_at = now
            if metrics is not None:
                metrics.sync_last_success.set(now)
        if error is not None:
            self.last_error = error
            self.last_error_at = now
