"""Where explore keeps Hypothesis's examples and its findings: a directory, or
a Redis server that the shards of one campaign share (`--db`, `--shard`).

`open_database(url_or_dir)` gives Hypothesis's own database for it (checked
before any container starts); `Store(db, campaign)` is that database in one
campaign's namespace, and where its shards publish their findings, which
`findings(url_or_dir)` lists (the merge of shards' reports reads them there).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

from hypothesis.database import ExampleDatabase

from kamleak.harness.errors import UsageError

# Redis keys: kamleak-explore:<namespace>:<Hypothesis's key> (a set of
# examples, Hypothesis's RedisExampleDatabase) and kamleak-explore:<namespace>:findings
# (a hash: one field per finding).  Under a directory: Hypothesis's own layout,
# and kamleak-findings/<namespace>/<finding>.json beside it.
REDIS_PREFIX = b"kamleak-explore:"
FINDINGS = "findings"
FINDINGS_DIR = "kamleak-findings"
PING_TIMEOUT_S = 2.0


def _redacted(url: str) -> str:
    """URL without its password: error lines and logs never show one."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def open_database(where: str):
    """Hypothesis's example database for `--db WHERE`: a directory, or
    redis://HOST[:PORT][/DB] (Hypothesis's RedisExampleDatabase, PINGed here with
    a short timeout so an unreachable server is bad input before anything starts).

    Any Redis host is accepted: a server the CI jobs share is the point (the
    tests' own is on 127.0.0.1)."""
    if "://" not in where:
        path = Path(where)
        if path.exists() and not path.is_dir():
            raise UsageError(f"--db {where} is not a directory", "pass a directory or redis://HOST:PORT")
        from hypothesis.database import DirectoryBasedExampleDatabase
        return DirectoryBasedExampleDatabase(str(path))
    parts = urlsplit(where)
    if parts.scheme != "redis":
        raise UsageError(f"--db {_redacted(where)}: unknown scheme '{parts.scheme}'",
                         "pass a directory or redis://HOST:PORT[/DB]")
    try:
        host, port = parts.hostname, parts.port or 6379
        db = int(parts.path.strip("/") or 0)
    except ValueError:
        raise UsageError(f"--db {_redacted(where)} is not a Redis URL",
                         "write redis://HOST:PORT[/DB], e.g. redis://127.0.0.1:6379/0") from None
    if not host:
        raise UsageError(f"--db {_redacted(where)} names no host", "write redis://127.0.0.1:6379")
    import redis
    from hypothesis.extra.redis import RedisExampleDatabase
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    server = dict(host=host, port=port, db=db, username=parts.username or None, password=parts.password or None,
                  socket_connect_timeout=PING_TIMEOUT_S, socket_timeout=30)
    # The check asks once (redis-py's default retries took 4 s to say 'refused');
    # the campaign's client keeps them for a server that blinks.
    probe = redis.Redis(**server, retry=Retry(NoBackoff(), 0))
    try:
        probe.ping()
    except redis.RedisError as exc:
        raise UsageError(f"cannot reach --db {_redacted(where)}: {_why(exc)}",
                         "start the Redis server or pass a directory") from None
    finally:
        probe.close()
    return RedisExampleDatabase(redis.Redis(**server), key_prefix=REDIS_PREFIX)


def _why(exc: Exception) -> str:
    """The cause a person knows ('Connection refused'), not redis-py's wrapping of it."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    text = str(exc).rstrip(".")
    return text.rsplit(". ", 1)[-1] if ". " in text else text


def namespace(campaign: dict) -> str:
    """A campaign's identity (Kamailio, config, vocabulary: CAMPAIGN) as a short key part."""
    return hashlib.sha256(json.dumps(campaign, sort_keys=True).encode()).hexdigest()[:16]


def _store_of(db):
    """Where findings go beside DB: ('redis', client) or ('dir', path)."""
    redis_client = getattr(db, "redis", None)
    if redis_client is not None:
        return "redis", redis_client
    return "dir", Path(db.path)


class Store:
    """DB (from open_database) in the namespace of one CAMPAIGN: `.examples` is the
    Hypothesis database the campaign runs with; `publish()` shares a finding.

    Why a namespace: Hypothesis keys a test's examples by the digest of the test
    function, which is Campaign's one body for every campaign; an example is
    Hypothesis's recorded choices, which mean another flow under another
    vocabulary, and its reuse phase deletes every stored example that no longer
    fails.  Without the namespace, a campaign on a clean build (or with other
    steps) would replay another campaign's findings as noise and then erase
    them from the shared database."""

    def __init__(self, db, campaign: dict):
        self.campaign, self.namespace = campaign, namespace(campaign)
        self.examples = Namespaced(db, self.namespace.encode() + b":")
        self._kind, self._where = _store_of(db)

    def publish(self, finding: dict) -> None:
        """FINDING (Finding.as_dict() and what a report adds: its "shard") for the other shards
        and the merge; one entry per (signature, flow, shard): a rerun of a shard replaces its
        entry, two shards that found one leak are both listed."""
        entry = {**finding, "campaign": self.campaign, "namespace": self.namespace}
        text = json.dumps(entry, sort_keys=True)
        field = hashlib.sha256(json.dumps([finding.get(k) for k in ("signature", "flow", "shard")],
                                          sort_keys=True).encode()).hexdigest()[:16]
        if self._kind == "redis":
            self._where.hset(REDIS_PREFIX + f"{self.namespace}:{FINDINGS}".encode(), field, text)
            return
        folder = self._where / FINDINGS_DIR / self.namespace
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{field}.{os.getpid()}.tmp"
        tmp.write_text(text)
        tmp.replace(folder / f"{field}.json")     # whole or absent, for a reader on shared storage


def findings(where: str, namespace: str | None = None) -> list[dict]:
    """The findings shards published in `--db WHERE` (one campaign's with NAMESPACE,
    else every campaign's), each with its "campaign" and "namespace"."""
    kind, store = _store_of(open_database(where))
    found: list[dict] = []
    if kind == "redis":
        pattern = REDIS_PREFIX + f"{namespace or '*'}:{FINDINGS}".encode()
        for key in sorted(store.scan_iter(match=pattern)):
            found += [json.loads(v) for _, v in sorted(store.hgetall(key).items())]
        return found
    for path in sorted((store / FINDINGS_DIR).glob(f"{namespace or '*'}/*.json")):
        found.append(json.loads(path.read_text()))
    return found


class Namespaced(ExampleDatabase):
    """An ExampleDatabase whose keys are PREFIX + Hypothesis's key in the wrapped DB
    (Hypothesis's public API for a database: save, fetch, delete, move, listeners)."""

    def __init__(self, db, prefix: bytes):
        super().__init__()
        self.db, self.prefix = db, prefix

    def __repr__(self) -> str:
        return f"Namespaced({self.db!r}, {self.prefix!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Namespaced) and (self.db, self.prefix) == (other.db, other.prefix)

    def __hash__(self) -> int:
        return hash(self.prefix)

    def save(self, key: bytes, value: bytes) -> None:
        self.db.save(self.prefix + key, value)

    def fetch(self, key: bytes):
        return self.db.fetch(self.prefix + key)

    def delete(self, key: bytes, value: bytes) -> None:
        self.db.delete(self.prefix + key, value)

    def move(self, src: bytes, dest: bytes, value: bytes) -> None:
        self.db.move(self.prefix + src, self.prefix + dest, value)

    def _start_listening(self) -> None:
        self.db.add_listener(self._relay)

    def _stop_listening(self) -> None:
        self.db.remove_listener(self._relay)

    def _relay(self, event) -> None:
        """The wrapped database's change, if it is in this namespace, with its key as Hypothesis knows it."""
        kind, (key, value) = event
        if key.startswith(self.prefix):
            self._broadcast_change((kind, (key[len(self.prefix):], value)))
