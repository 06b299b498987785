"""downstream-node: an event-sourced contract ledger for proof-of-storage farming.

Three layers, dependencies pointing one way: ``http`` -> ``projections`` -> ``ledger``.
"""

__version__ = "0.2.0.dev0"
