"""The ledger: events, the append-only event store, decisions and the heartbeat scheme.

Nothing here knows about HTTP or about the read models built from the events.
"""
