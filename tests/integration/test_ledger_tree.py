"""The Merkle tree kept with the appends: it covers exactly the committed events, its roots and
proofs verify against the public forms recomputed from the events, and it catches up after
appends by a store without the log's key."""

from __future__ import annotations

import datetime as dt
import json
import random

import pytest
from sqlalchemy.engine import Engine

from downstream_node.domain.public import PublicForms
from downstream_node.domain.records import NewEvent
from downstream_node.ledger import feed, tree
from downstream_node.ledger.db import read_transaction
from downstream_node.ledger.store import AppendFailed, AppendRequest, EventStore
from downstream_node.tlog import merkle

FORMS = PublicForms(b"c" * 32)
AT = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def new(n: int) -> NewEvent:
    return NewEvent("Test", 1, {"n": n, "text": "é"}, AT, {"remote": "198.51.100.4"})


def fill(store: EventStore, count: int, stream: str = "s") -> None:
    for n in range(count):
        store.append(f"{stream}-{n % 3}", None, [new(n)])


def check_tree(engine: Engine) -> int:
    """Every size's root and a few proofs against the tree recomputed from the events."""
    recomputed = feed.recompute(engine, FORMS)
    assert recomputed.gap is None
    memory = recomputed.tree
    with read_transaction(engine) as conn:
        size = tree.tree_size(conn)
        assert size == memory.size
        for n in range(size + 1):
            assert tree.root(conn, n) == memory.root(n)
        for n in range(1, size + 1):
            for i in {0, n // 2, n - 1}:
                proof = tree.inclusion_proof(conn, i, n)
                merkle.verify_inclusion(memory.get(0, i), i, n, proof, memory.root(n))
            for m in {0, 1, n // 2, n}:
                proof = tree.consistency_proof(conn, m, n)
                merkle.verify_consistency(m, n, proof, memory.root(m), memory.root(n))
    return size


def test_every_append_extends_the_tree_in_its_transaction(engine: Engine) -> None:
    store = EventStore(engine, public=FORMS)
    store.create_schema()
    fill(store, 12)
    results = store.append_batch(
        [AppendRequest("batch-a", None, [new(100), new(101)]), AppendRequest("b", None, [new(7)])]
    )
    assert check_tree(engine) == 15 == store.head().position
    # The append hands back its events' leaf hashes: the public forms' ones.
    lines = {p: leaf for p, _, leaf in feed.public_lines(engine, FORMS)}
    for result in results:
        assert result.leaves == tuple(lines[p] for p in result.positions)


def test_the_tree_catches_up_with_appends_made_without_the_key(engine: Engine) -> None:
    keyless = EventStore(engine)
    keyless.create_schema()
    fill(keyless, 5)
    keyed = EventStore(engine, public=FORMS)
    fill(keyed, 2, "k")  # the first append under the key covers the five before it too
    fill(keyless, 4)  # and again: the keyed store's cached frontier is stale now
    fill(keyed, 1, "k")
    assert check_tree(engine) == 12

    later = EventStore(engine)
    fill(later, 23)
    caught_up = EventStore(engine, public=FORMS)
    caught_up.tree.CATCH_UP_PAGE = 4  # type: ignore[union-attr]
    assert caught_up.catch_up_tree(batch=10) == 35
    assert check_tree(engine) == 35


def test_a_tree_ahead_of_the_ledger_refuses_to_append(engine: Engine) -> None:
    store = EventStore(engine, public=FORMS)
    store.create_schema()
    fill(store, 3)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE ledger_head SET position = 2")
        conn.exec_driver_sql("DELETE FROM events WHERE position = 3")
    store.tree.clear()  # type: ignore[union-attr]
    with pytest.raises(tree.TreeBehind, match="covers 3 events but the ledger holds 2"):
        store.append("x", None, [new(9)])


def test_the_export_line_is_the_public_form_with_its_leaf_hash(engine: Engine) -> None:
    store = EventStore(engine, public=FORMS)
    store.create_schema()
    fill(store, 2)
    for _, data, leaf in feed.public_lines(engine, FORMS):
        line = json.loads(feed.export_line(data, leaf))
        assert line.pop("leaf_hash")
        assert json.dumps(line, sort_keys=True, separators=(",", ":"), ensure_ascii=False) == (
            data.decode()
        )
        assert b"198.51.100.4" not in data


def test_tiles_across_levels_give_the_recomputed_roots_and_proofs(engine: Engine) -> None:
    """Over 64 * 64 leaves the tree has tiles on three levels; batches of odd sizes, appends
    without the key and catch-ups cut them at every kind of place."""
    keyless = EventStore(engine)
    keyless.create_schema()
    keyed = EventStore(engine, public=FORMS)
    rng = random.Random(5)
    total = 0
    while total < 4200:
        count = rng.choice([1, 3, 63, 64, 65, 130, 200])
        store = keyless if rng.random() < 0.2 else keyed
        store.append_batch([AppendRequest(f"s{total + i}", None, [new(i)]) for i in range(count)])
        total += count
    keyed.catch_up_tree()
    memory = feed.recompute(engine, FORMS).tree
    sizes = sorted(
        {1, 63, 64, 65, 4095, 4096, 4097, memory.size} | set(rng.sample(range(1, memory.size), 40))
    )
    with read_transaction(engine) as conn:
        assert tree.tree_size(conn) == memory.size == total
        for n in sizes:
            assert tree.root(conn, n) == memory.root(n), n
            i = rng.randrange(n)
            merkle.verify_inclusion(
                memory.get(0, i), i, n, tree.inclusion_proof(conn, i, n), memory.root(n)
            )
            m = rng.randint(0, n)
            merkle.verify_consistency(
                m, n, tree.consistency_proof(conn, m, n), memory.root(m), memory.root(n)
            )
            assert tree.leaf(conn, i + 1) == memory.get(0, i)
        assert tree.leaf(conn, memory.size + 1) is None


mariadb_only = pytest.mark.parametrize("db_url", ["mysql"], indirect=True)


@mariadb_only
def test_a_head_update_refused_after_the_tiles_fails_the_append_whole(engine: Engine) -> None:
    """On MySQL the tiles and the head go in one multi-statement packet. Made to fail (a
    trigger refusing the head's update), the second statement's error reaches the caller
    (SQLAlchemy would have lost it closing the cursor) and nothing is committed."""
    store = EventStore(engine, public=FORMS)
    store.create_schema()
    fill(store, 3)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER refuse_head BEFORE UPDATE ON ledger_head FOR EACH ROW "
            "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'head refused'"
        )
    with pytest.raises(AppendFailed, match="head refused") as failed:
        store.append("s-x", None, [new(99)])
    assert failed.value.before_commit
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER refuse_head")
    assert store.head().position == 3
    assert check_tree(engine) == 3  # neither the event nor its tiles were kept
    fill(store, 2, stream="after")
    assert check_tree(engine) == 5 == store.head().position
