"""The domain: events and their registry, records, contracts, tokens, uptime, the clock,
canonical JSON and errors. Pure Python: no database driver, no SQL, no HTTP.
"""
