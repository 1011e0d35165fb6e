"""explore's --db and --shard: what they accept, one campaign's examples kept
apart from another's in a real directory database and a real Redis server
(Debian's redis-server on loopback), and findings shared through them."""

from __future__ import annotations

import pytest
from hypothesis.database import DirectoryBasedExampleDatabase

from kamleak.harness.errors import UsageError
from kamleak.harness.stack import ports
from kamleak.harness.tools.explore import db
from kamleak.harness.tools.explore.cli import parse_shard, shard_seed
from tests.redis_server import redis_server  # noqa: F401 - the fixture

CAMPAIGN = {"kamailio": "6.0.1", "config": "variant uac_req_send", "steps": ["invite", "rst", "pbx_bye"]}
OTHER = {**CAMPAIGN, "kamailio": "6.1.5"}


@pytest.mark.parametrize("text, expected", [("1/2", (1, 2)), ("2/2", (2, 2)), (" 3 / 4 ", (3, 4)), (None, None)])
def test_a_shard_is_i_of_n(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["0/2", "3/2", "x", "1/0", "1", "-1/2", "1/2/3", ""])
def test_a_bad_shard_is_one_line(text):
    with pytest.raises(UsageError) as exc:
        parse_shard(text)
    assert exc.value.line() == f"not a shard: '{text}'; write I/N with 1 <= I <= N, e.g. --shard 2/4"


def test_each_shard_has_its_own_seed_and_a_rerun_the_same():
    seeds = [shard_seed(7, i) for i in (1, 2, 3, 4)]
    assert len(set(seeds)) == 4 and seeds == [shard_seed(7, i) for i in (1, 2, 3, 4)]
    assert shard_seed(8, 1) != seeds[0]


@pytest.mark.parametrize("url, message", [
    ("http://127.0.0.1:6379", "--db http://127.0.0.1:6379: unknown scheme 'http'"),
    ("redis://127.0.0.1:port", "--db redis://127.0.0.1:port is not a Redis URL"),
    ("redis://127.0.0.1:6379/zero", "--db redis://127.0.0.1:6379/zero is not a Redis URL"),
    ("redis:///0", "--db redis:///0 names no host"),
    ("redis://:hunter2@127.0.0.1:x", "--db redis://:***@127.0.0.1:x is not a Redis URL"),
])
def test_a_bad_db_url_is_one_line(url, message):
    with pytest.raises(UsageError) as exc:
        db.open_database(url)
    assert exc.value.cause == message and "hunter2" not in exc.value.line()


def test_an_unreachable_redis_is_refused_before_anything_starts():
    (port,) = ports.allocate(1)         # free: nothing listens there
    try:
        with pytest.raises(UsageError) as exc:
            db.open_database(f"redis://127.0.0.1:{port}")
    finally:
        ports.release(port)
    assert exc.value.line() == (f"cannot reach --db redis://127.0.0.1:{port}: Connection refused; "
                                "start the Redis server or pass a directory")


def test_a_file_is_not_a_directory_db(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(UsageError, match="is not a directory"):
        db.open_database(str(tmp_path / "f"))


def _kept_apart(where: str):
    a, b = db.Store(db.open_database(where), CAMPAIGN), db.Store(db.open_database(where), OTHER)
    assert a.namespace != b.namespace
    a.examples.save(b"key", b"choices")
    a.examples.save(b"key.secondary", b"more")
    assert set(a.examples.fetch(b"key")) == {b"choices"}
    assert set(b.examples.fetch(b"key")) == set() and set(b.examples.fetch(b"key.secondary")) == set()
    # The same campaign on another shard (another process, same identity) sees it.
    assert set(db.Store(db.open_database(where), dict(CAMPAIGN)).examples.fetch(b"key")) == {b"choices"}
    a.examples.move(b"key", b"key.secondary", b"choices")
    assert set(a.examples.fetch(b"key")) == set()
    assert set(a.examples.fetch(b"key.secondary")) == {b"more", b"choices"}
    a.examples.delete(b"key.secondary", b"more")
    assert set(a.examples.fetch(b"key.secondary")) == {b"choices"}
    return a, b


def _findings_shared(where: str, a, b):
    finding = {"signature": "tm cell: BYE out0/ref1", "flow": {"transport": "ws", "steps": ["invite:answer"]}}
    a.publish({**finding, "shard": "1/2", "seed": 1})
    a.publish({**finding, "shard": "1/2", "seed": 2})    # a rerun of shard 1: its entry replaced
    a.publish({**finding, "shard": "2/2", "seed": 1})    # another shard's: listed too
    b.publish({**finding, "shard": "1/2"})
    mine = db.findings(where, a.namespace)
    assert sorted((f["shard"], f["seed"]) for f in mine) == [("1/2", 2), ("2/2", 1)]
    assert all(f["signature"] == finding["signature"] and f["campaign"] == CAMPAIGN
               and f["namespace"] == a.namespace for f in mine)
    assert sorted(f["campaign"]["kamailio"] for f in db.findings(where)) == ["6.0.1", "6.0.1", "6.1.5"]


def test_a_directory_db_keeps_campaigns_apart_and_shares_findings(tmp_path):
    where = str(tmp_path / "examples")
    a, b = _kept_apart(where)
    # Under it is Hypothesis's own database: the raw key is not there, the namespaced one is.
    raw = DirectoryBasedExampleDatabase(where)
    assert set(raw.fetch(b"key.secondary")) == set()
    assert set(raw.fetch(a.namespace.encode() + b":key.secondary")) == {b"choices"}
    _findings_shared(where, a, b)


def test_a_redis_db_keeps_campaigns_apart_and_shares_findings(redis_server):
    a, b = _kept_apart(redis_server.url)
    keys = set(redis_server.client().keys("*"))
    assert f"kamleak-explore:{a.namespace}:key.secondary".encode() in keys
    assert not any(k.startswith(f"kamleak-explore:{b.namespace}:".encode()) for k in keys)
    _findings_shared(redis_server.url, a, b)
    assert redis_server.client().hlen(f"kamleak-explore:{a.namespace}:findings") == 2


def test_a_listener_hears_its_own_namespace_only(redis_server):
    import time

    a, b = (db.Store(db.open_database(redis_server.url), c) for c in (CAMPAIGN, OTHER))
    heard: list = []
    a.examples.add_listener(heard.append)
    try:
        b.examples.save(b"k", b"theirs")
        a.examples.save(b"k", b"mine")
        deadline = time.monotonic() + 5
        while not heard and time.monotonic() < deadline:
            a.examples.db._pubsub.get_message(timeout=0.2)   # redis-py delivers on the reader's call
    finally:
        a.examples.clear_listeners()
    assert heard == [("save", (b"k", b"mine"))]
