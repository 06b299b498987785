"""The ledger's persistence: the events table, the append-only event store, group commit,
the hash chain's verification, and the one reader of the events table.
"""
