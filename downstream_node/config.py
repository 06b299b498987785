"""Settings of a node: where its ledger and secret live and the protocol's limits.

Every value has the original server's default; the CLI and the environment override them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .domain.contracts import HandBackPolicy
from .domain.tokens import TokenPolicy
from .ledger.db import DbTimeouts, default_url, is_sqlite, sqlite_file

MiB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    db_url: str = field(default_factory=default_url)
    secret_file: Path | None = None  # default: beside the SQLite file, else the working dir
    heartbeat: str = "Merkle"
    # Record a new secret for a ledger configured with another (lost) one.
    new_secret: bool = False
    check_fraction: float = 0.01
    challenges: int = 256
    interval: int = 300  # seconds between challenges
    redundancy: int = 3
    chunk_size: int = 32 * MiB
    max_bytes_per_address: int = 1024 * MiB
    max_chunks_per_request: int = 10
    token_policy: TokenPolicy = field(default_factory=TokenPolicy)
    max_body: int = 256 * 1024  # bytes of a request body; a Merkle proof is about 1 KiB
    # The v1 API's bulk /answer: a farmer's batch of several hundred proofs in one body.
    max_bulk_body: int = 4 * MiB
    requests_per_token_per_minute: int = 600
    new_tokens_per_ip_per_minute: int = 60  # requests to /new, refused ones included
    sweep_seconds: float = 30.0
    # A chunk a farmer handed back (/remove) is not offered to it again for this long, so one
    # it cannot store (an operator's real file) does not come back first on every /chunk.
    handed_back_seconds: int = 86_400
    # Hand-backs (/remove) per hour, per token and per crowdsale address across its tokens:
    # each /chunk then /remove cycle writes a new encoding into the ledger for ever.
    hand_backs: HandBackPolicy = field(default_factory=HandBackPolicy)
    # A MaxMind DB (GeoLite2-City) for the v1 status routes' locations; None: all null.
    geoip: Path | None = None
    # Reverse proxies (addresses or networks) whose X-Forwarded-For names the farmer.
    trusted_proxies: tuple[str, ...] = ()
    # Time budgets for the database, in seconds (None: no bound, for the operator's commands,
    # which may run long statements; ``serve`` sets them all, see its --db-* options): to
    # connect, to read or write on a connection's socket (on SQLite the read timeout is the
    # busy timeout), and how long one request waits for the database in all before the node
    # answers 503 with Retry-After (``db_wait``).
    db_connect_timeout: float | None = None
    db_read_timeout: float | None = None
    db_write_timeout: float | None = None
    db_wait: float | None = None

    def db_timeouts(self) -> DbTimeouts:
        return DbTimeouts(self.db_connect_timeout, self.db_read_timeout, self.db_write_timeout)

    # The transparency log's origin (its checkpoints' first line and its key's name); default:
    # the name kept in the log's key file, made from its first public key.
    log_origin: str | None = None
    # Record a new signing key for the log (a rotation); the commitment key is kept.
    new_log_key: bool = False

    def secret_path(self) -> Path:
        if self.secret_file is not None:
            return self.secret_file
        env = os.environ.get("DOWNSTREAM_SECRET_FILE")
        if env:
            return Path(env)
        db_file = sqlite_file(self.db_url) if is_sqlite(self.db_url) else None
        if db_file is not None:
            return db_file.with_name(db_file.stem + "-secret.json")
        return Path.cwd() / "node-secret.json"
