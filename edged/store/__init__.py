"""The local store: SQLite (WAL, synchronous=FULL) holding inputs, events and the cloud outbox.

Rooms: ``db`` (connection, schema, writer thread, transactions), ``group`` (group commit: writes
queued together share a transaction and its fsync), ``migrate`` (older schemas, in place),
``codec`` (ids and bodies on disk), ``counters`` (totals, eviction log, commit rate),
``events`` (commit, dedupe, MQTT marks), ``attempts`` (MQTT frames started, not committed),
``outbox`` (batches, acks, dead letters), ``space`` (caps, expiry), ``history`` (reads of past events, on
a connection of their own), ``live`` (committed events to streams), ``api`` (the Store that wraps them).
docs/STORE.md is the contract.
"""

from edged.store.api import Store
from edged.store.db import StoreError
from edged.store.events import Admit, Queueing
from edged.store.history import Entry, Image, Page, Query
from edged.store.live import Live, Subscription
from edged.store.outbox import DeadLetter, OutboxEntry, OutboxState

__all__ = ["Admit", "DeadLetter", "Entry", "Image", "Live", "OutboxEntry", "OutboxState", "Page", "Query", "Queueing",
           "Store", "StoreError", "Subscription"]
