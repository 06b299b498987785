"""A small transparency log toolkit: RFC 6962 Merkle trees, C2SP signed notes and checkpoints.

Pure and standalone: it needs only the standard library and ``cryptography`` (Ed25519).
"""
