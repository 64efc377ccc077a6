"""Cloud sync: the outbox drained into Dapr pub/sub (edged.sync.dapr)."""
