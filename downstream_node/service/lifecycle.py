"""Starting a node: the schema, the projections, and the secret heartbeat its ledger names;
and the health probe. A node starts only with the secret its ledger was configured with.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterable
from typing import Any

from ..domain import events as ev
from ..domain.errors import Refused
from ..domain.records import RecordedEvent
from ..heartbeat.scheme import ProofScheme
from ..projections.queries import Reader
from ..projections.rebuild import ensure_projections
from . import bootstrap
from .context import OPERATOR
from .logkeys import LogKeys, keys_path
from .retry import until_appended
from .runtime import Runtime

HEALTH_TIMEOUT = 5.0  # seconds a health probe waits for the database


async def start(rt: Runtime) -> None:
    """Create the schema and projections if needed and load (or create) the secret.

    The secret must be the one the ledger's last ``HeartbeatConfigured`` names: the
    contracts' states are sealed with it. A missing or other secret is refused (a node
    started from another directory would otherwise make a new one and fail every
    contract), unless ``settings.new_secret`` says to record a new one.
    """
    store = rt.maintenance() if rt.maintenance is not None else rt.store
    try:
        await rt.run(store.create_schema)
        await rt.run(ensure_projections, store)
    finally:
        if store is not rt.store:
            store.engine.dispose()
    node_stream = await rt.run(rt.store.read_stream, ev.NODE_STREAM)
    if rt.scheme is None:
        rt.scheme = await _load_secret(rt, configured_fingerprint(node_stream))
    # Every check before the first append: the secret's first (as before the log existed),
    # then the log key's, so that a refused start (say, --new-secret without the log's key
    # file beside the new secret) records nothing.
    _refuse_another_secret(rt, rt.scheme.fingerprint(), configured_fingerprint(node_stream))
    keys = rt.log_keys or await _load_log_keys(rt, node_stream)
    await _record_heartbeat(rt, rt.scheme)
    if rt.log_keys is None:
        bootstrap.attach_log(rt, keys)
    # The tree covers every event before this node's first append with it (the heartbeat
    # just recorded included): a store without the key may have appended meanwhile.
    await rt.run(rt.store.catch_up_tree)
    await _record_log_key(rt, rt.keys())
    if keys.ledger is None:
        await _bind_log_keys(rt)


async def _bind_log_keys(rt: Runtime) -> None:
    """Write into the key file which ledger its keys sign for (the hash of the ledger's
    first event), now that the ledger names them: another, fresh database started with this
    file is then refused. The file keeps its own name for the log (not ``--log-origin``)."""
    first = (await rt.run(rt.store.read_stream, ev.NODE_STREAM))[0]
    path = keys_path(rt.settings.secret_path())
    kept = await rt.run(LogKeys.load, path)
    if kept.ledger is None:
        await rt.run(dataclasses.replace(kept, ledger=first.hash).save, path)


async def _load_secret(rt: Runtime, configured: str | None) -> ProofScheme:
    settings = rt.settings
    path = settings.secret_path()
    keep = configured is not None and not settings.new_secret
    if keep and not await rt.run(path.exists):
        raise Refused(
            "secret_missing",
            f"this ledger's heartbeat secret (fingerprint {str(configured)[:12]}) is "
            f"not at {path}: point --secret-file at it (or use --new-secret if it is "
            "lost; contracts made under it then end)",
        )
    try:
        scheme, _ = await rt.run(
            ProofScheme.load_or_create,
            path,
            settings.heartbeat,
            check_fraction=settings.check_fraction,
            challenges=settings.challenges,
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise Refused("bad_secret", f"cannot read the secret file {path}: {_reason(exc)}") from exc
    return scheme


def _refuse_another_secret(rt: Runtime, fingerprint: str, last: str | None) -> None:
    """``secret_mismatch`` unless the ledger names no secret, this one, or a new one is
    asked for (``--new-secret``)."""
    if last is not None and last != fingerprint and not rt.settings.new_secret:
        raise Refused(
            "secret_mismatch",
            f"the secret file {rt.settings.secret_path()} (fingerprint "
            f"{fingerprint[:12]}) is not the one this ledger was configured with "
            f"({last[:12]}): point --secret-file at that one (or use --new-secret "
            "if it is lost; contracts made under it then end)",
        )


async def _record_heartbeat(rt: Runtime, scheme: ProofScheme) -> None:
    fingerprint = scheme.fingerprint()
    event = ev.HeartbeatConfigured(
        kind=scheme.kind,
        public=json.dumps(scheme.public(), sort_keys=True),
        key_fingerprint=fingerprint,
    )

    async def attempt() -> None:
        history = await rt.run(rt.store.read_stream, ev.NODE_STREAM)
        last = configured_fingerprint(history)
        if last == fingerprint:
            return
        # Read at the version the append would need: also a node that started together
        # with another holding a different secret stops here.
        _refuse_another_secret(rt, fingerprint, last)
        version = history[-1].version if history else 0
        # At the version read: nodes starting together record it once.
        await rt.append(ev.NODE_STREAM, version, [event], OPERATOR)

    await until_appended(attempt, busy="could not record the node's heartbeat; try again")


async def health(rt: Runtime) -> dict[str, Any]:
    def probe(r: Reader) -> dict[str, Any]:
        return {
            "position": r.head_position,
            "projection_lag": r.lag(),
            "generation": r.t.generation,
        }

    # A stalled database (a lock held elsewhere, a dead connection) is reported, not
    # waited for: monitors get their 503 instead of a hung probe.
    return await asyncio.wait_for(rt.read(probe), HEALTH_TIMEOUT)


async def _load_log_keys(rt: Runtime, node_stream: list[RecordedEvent]) -> LogKeys:
    """The log's keys from beside the secret, created with the ledger's first start.

    Refused like the secret: missing while the ledger names a key (a node started from
    another directory), holding another commitment key (its leaves would not match the
    tree's), or bound to another ledger (a fresh database started beside an existing
    ledger's files); another signing key only with ``new_log_key`` (a rotation)."""
    configured = configured_log_key(node_stream)
    settings = rt.settings
    path = keys_path(settings.secret_path())
    if configured is not None and not await rt.run(path.exists):
        raise Refused(
            "log_key_missing",
            f"this ledger's transparency-log key ({configured['vkey']}) is not at {path}: "
            "put the key file back beside the secret",
        )
    try:
        keys, _ = await rt.run(LogKeys.load_or_create, path, settings.log_origin)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise Refused("bad_secret", f"cannot read the log key file {path}: {_reason(exc)}") from exc
    ledger = node_stream[0].hash if node_stream else None
    if keys.ledger is not None and keys.ledger != ledger:
        raise Refused(
            "log_key_mismatch",
            f"the log key file {path} signs another ledger's checkpoints (the one whose "
            f"first event's hash begins {keys.ledger[:12]}): a second history under one key "
            "looks like a fork to auditors; give this database its own --secret-file (to "
            "start a ledger over, move the old secret and its key file aside with it)",
        )
    if configured is None:
        return keys
    if keys.commit_key_id() != configured["commit_key_id"]:
        raise Refused(
            "log_key_mismatch",
            f"the log key file {path} holds another commitment key than this ledger's: "
            "put this ledger's key file back",
        )
    if settings.new_log_key:
        keys = keys.rotated()
        await rt.run(keys.save, path)
    elif keys.vkey != configured["vkey"] and keys.origin == configured["origin"]:
        raise Refused(
            "log_key_mismatch",
            f"the log key file {path} ({keys.vkey}) is not the key this ledger names "
            f"({configured['vkey']}): put that file back (or rotate with --new-log-key)",
        )
    return keys


async def _record_log_key(rt: Runtime, keys: LogKeys) -> None:
    event = ev.LogKeyConfigured(
        origin=keys.origin, vkey=keys.vkey, commit_key_id=keys.commit_key_id()
    )

    async def attempt() -> None:
        history = await rt.run(rt.store.read_stream, ev.NODE_STREAM)
        last = configured_log_key(history)
        if last is not None and last["vkey"] == keys.vkey:
            return
        version = history[-1].version if history else 0
        await rt.append(ev.NODE_STREAM, version, [event], OPERATOR)

    await until_appended(attempt, busy="could not record the log's key; try again")


def configured_log_key(node_stream: Iterable[RecordedEvent]) -> dict[str, Any] | None:
    """The payload of the node stream's last ``LogKeyConfigured``, if any."""
    configured = [e for e in node_stream if e.event_type == "LogKeyConfigured"]
    return dict(configured[-1].payload) if configured else None


async def files_below_target(rt: Runtime) -> tuple[int, int]:
    """(files below their redundancy now, files with no replica online now), from the
    projections at the node's clock."""
    now = rt.now()
    return await asyncio.wait_for(rt.read(lambda r: r.files_below_target(now)), HEALTH_TIMEOUT)


def configured_fingerprint(node_stream: Iterable[RecordedEvent]) -> str | None:
    """The key fingerprint of the node stream's last ``HeartbeatConfigured``, if any."""
    configured = [e for e in node_stream if e.event_type == "HeartbeatConfigured"]
    return str(configured[-1].payload["key_fingerprint"]) if configured else None


def _reason(exc: BaseException) -> str:
    return f"missing {exc}" if isinstance(exc, KeyError) else str(exc) or type(exc).__name__
