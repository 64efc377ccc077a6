"""The local store: SQLite (WAL, synchronous=FULL) holding inputs, events and the cloud outbox.

Rooms: ``db`` (connection, schema, writer thread, transactions), ``counters`` (totals, eviction log),
``events`` (commit, dedupe, MQTT marks), ``outbox`` (batches, acks, dead letters), ``space`` (caps,
expiry), ``api`` (the Store that wraps them). docs/STORE.md is the contract.
"""

from edged.store.api import Store
from edged.store.db import StoreError
from edged.store.events import Encode
from edged.store.outbox import DeadLetter, OutboxEntry, OutboxState

__all__ = ["DeadLetter", "Encode", "OutboxEntry", "OutboxState", "Store", "StoreError"]
