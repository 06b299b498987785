"""Read models folded from the ledger's events, and the projector that keeps them current."""
