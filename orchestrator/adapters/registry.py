"""The orchestrator's registry: agents, their models, profiles, saved state and decisions.

One SQLite file (or ``":memory:"``) through the standard library's `sqlite3`:

- WAL journal, so readers (e.g. ``sqlite3`` on the command line) never block the writer;
  ``synchronous=NORMAL``: every commit is atomic and the file stays consistent after a crash
  of the process or the machine (a power cut may lose only the last commits).
- One connection shared by all threads (``check_same_thread=False``), guarded by one
  `threading.Lock`; every write runs in its own ``BEGIN IMMEDIATE`` ... ``COMMIT``
  transaction, rolled back on any error, so nothing is ever half-written.
- Typed in, typed out: facts, model statuses, profiles and decisions go in and come out as
  the contract's own pydantic models (`HostFacts`, `ModelStatus`, `ModelProfile`,
  `Placement`), stored as their JSON (TEXT); only the orchestrator's saved state (the rate
  and pool snapshots, its own formats) stays a plain JSON object. A stored document this
  version of the contract cannot read (written by an older or newer one) is skipped with a
  warning, never an error: an agent whose facts do not read is unknown until it registers
  again (its next heartbeat tells it to), a model status or profile until the agent's next
  heartbeat sends it again, a decision is left out of the history.
- The schema is created on open and its version recorded in ``schema_version``; a file
  written by a newer schema is refused rather than misread.
- Damage is loud: on open ``PRAGMA quick_check`` runs, and a file that is not a database,
  is malformed or fails the check raises `RegistryDamaged` (the CLI prints its one line and
  exits 4); a missing file, or a 0-byte one, becomes a new database with a log line saying so.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from pydantic import BaseModel, ValidationError

from genedge.contract import HostFacts, ModelProfile, ModelStatus, Placement

__all__ = [
    "AGENT_ROLES",
    "AGENT_STATUSES",
    "KEEP_DECISIONS",
    "AgentRecord",
    "Registry",
    "RegistryDamaged",
    "StoredDecision",
]

log = logging.getLogger("orchestrator.registry")


class RegistryDamaged(RuntimeError):
    """The registry file is damaged or not a registry; the message says what to do."""


SCHEMA_VERSION = 1
KEEP_DECISIONS = 100
AGENT_ROLES = ("edge", "cloud")
AGENT_STATUSES = ("up", "down")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    role TEXT NOT NULL,
    facts TEXT NOT NULL,
    status TEXT NOT NULL,
    registered_at REAL NOT NULL,
    last_heartbeat REAL
);
CREATE TABLE IF NOT EXISTS agent_models (
    agent_id TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    model_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (agent_id, model_id)
);
CREATE TABLE IF NOT EXISTS profiles (
    agent_id TEXT NOT NULL,
    model_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (agent_id, model_id)
);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    doc TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class AgentRecord:
    """A registered agent as the registry last heard of it.

    ``facts`` is the agent's latest `HostFacts`; ``status`` is ``"up"`` or ``"down"``; times
    are the orchestrator's clock (seconds). Registering counts as a heartbeat, so
    ``last_heartbeat`` is set from the first registration on.
    """

    id: str
    url: str
    role: str
    facts: HostFacts
    status: str
    registered_at: float
    last_heartbeat: float | None


_M = TypeVar("_M", bound=BaseModel)
_UNTIL_HEARTBEAT = "the model is left out until the agent's next heartbeat"
_UNTIL_SENT = "the model counts as not measured until the agent sends its profile again"


class StoredDecision(NamedTuple):
    """A decision as saved: its id (ids only grow), when it was made, the placement view."""

    id: int
    at: float
    placement: Placement


def _dumps(doc: Any, what: str) -> str:
    if not isinstance(doc, dict):
        raise TypeError(f"{what} must be a dict, got {type(doc).__name__}")
    return json.dumps(doc, separators=(",", ":"))


def _loads(text: str) -> dict[str, Any]:
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("stored document is not a JSON object")
    return doc


def _dump_model(value: object, cls: type[BaseModel], what: str) -> str:
    """A contract model as the JSON stored for it; anything else (a plain dict above all)
    is refused, so no untyped document reaches the file."""
    if not isinstance(value, cls):
        raise TypeError(f"{what} must be a {cls.__name__}, got {type(value).__name__}")
    return value.model_dump_json()


class Registry:
    """The SQLite registry (see the module docstring). Thread-safe; use as a context manager
    or call `close`."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            file = Path(self.path)
            file.parent.mkdir(parents=True, exist_ok=True)
            if not file.exists():
                log.info("no registry at %s: starting a new one", file)
            elif file.is_file() and file.stat().st_size == 0:
                log.warning(
                    "registry %s is empty (0 bytes): starting a new one; agents re-register, "
                    "but earlier decisions, profiles and rates are not there",
                    file,
                )
        self._lock = threading.Lock()
        self._unreadable: set[str] = set()  # documents skipped, and said so, already
        # isolation_level=None: no implicit transactions; `_write` opens them explicitly.
        try:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._damaged(str(exc)) from None
        try:
            self._setup()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise self._damaged(str(exc)) from None
        except BaseException:
            self._conn.close()
            raise

    def _load(self, text: str, cls: type[_M], what: str, meanwhile: str) -> _M | None:
        """A stored document as its contract model, or None where this version of the
        contract cannot read it: the caller skips it, and says what happens `meanwhile`.
        Logged once per document, not on every read (the agents are read many times a
        second)."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            if what not in self._unreadable:
                self._unreadable.add(what)
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "document"
                log.warning(
                    "skipping the stored %s, which this orchestrator cannot read (%d "
                    "problem(s); first: %s: %s); %s",
                    what,
                    exc.error_count(),
                    where,
                    first["msg"],
                    meanwhile,
                )
            return None

    def _damaged(self, reason: str) -> RegistryDamaged:
        return RegistryDamaged(
            f"registry {self.path} is damaged or not a genedge registry ({reason}): restore "
            "it from a backup, or move it aside to start with an empty one"
        )

    # ---------------------------------------------------------------- lifecycle

    def _setup(self) -> None:
        with self._lock:
            conn = self._conn
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=5000")
            problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(str(p) for p in problems[:3]))
        with self._write() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = cur.execute("SELECT MAX(version) FROM schema_version").fetchone()
            found = row[0] if row else None
            if found is not None and found > SCHEMA_VERSION:
                raise RuntimeError(
                    f"registry {self.path} has schema version {found}, newer than this "
                    f"orchestrator's {SCHEMA_VERSION}; upgrade the orchestrator"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    cur.execute(statement)
            if found is None:
                cur.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))

    def close(self) -> None:
        """Close the connection (idempotent); later calls raise `sqlite3.ProgrammingError`."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def schema_version(self) -> int:
        """The schema version of the open file."""
        row = self._read_one("SELECT MAX(version) FROM schema_version", ())
        return int(row[0]) if row and row[0] is not None else 0

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction under the lock: committed whole, or rolled back whole."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
            finally:
                cur.close()

    def _read_all(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _read_one(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        with self._lock:
            row: tuple[Any, ...] | None = self._conn.execute(sql, params).fetchone()
            return row

    # ---------------------------------------------------------------- agents

    def upsert_agent(
        self, agent_id: str, url: str, role: str, facts: HostFacts, now: float
    ) -> None:
        """Register ``agent_id``, or re-register it (after a restart of either side).

        Sets url, role, facts, ``registered_at = last_heartbeat = now`` and status ``"up"``.
        The agent's model list is kept until its next heartbeat replaces it.
        """
        if not agent_id:
            raise ValueError("agent_id must be non-empty")
        if role not in AGENT_ROLES:
            raise ValueError(f"role must be one of {AGENT_ROLES}, got {role!r}")
        facts_text = _dump_model(facts, HostFacts, "facts")
        with self._write() as cur:
            cur.execute(
                "INSERT INTO agents (id, url, role, facts, status, registered_at, last_heartbeat)"
                " VALUES (?, ?, ?, ?, 'up', ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET url = excluded.url, role = excluded.role,"
                " facts = excluded.facts, status = 'up',"
                " registered_at = excluded.registered_at,"
                " last_heartbeat = excluded.last_heartbeat",
                (agent_id, url, role, facts_text, float(now), float(now)),
            )

    def heartbeat(
        self,
        agent_id: str,
        facts: HostFacts | None,
        models: Sequence[ModelStatus],
        now: float,
    ) -> bool:
        """Record a heartbeat: ``last_heartbeat = now``, status ``"up"``, the agent's models.

        ``models`` replaces the stored list whole; ``facts`` replaces the stored facts unless
        it is None. Returns False, writing nothing, if the agent is not registered.
        """
        facts_text = None if facts is None else _dump_model(facts, HostFacts, "facts")
        docs = [_dump_model(m, ModelStatus, "model status") for m in models]
        rows = [
            (agent_id, i, m.id, doc) for i, (m, doc) in enumerate(zip(models, docs, strict=True))
        ]
        with self._write() as cur:
            found = cur.execute("SELECT 1 FROM agents WHERE id = ?", (agent_id,)).fetchone()
            if found is None:
                return False
            cur.execute(
                "UPDATE agents SET last_heartbeat = ?, status = 'up',"
                " facts = COALESCE(?, facts) WHERE id = ?",
                (float(now), facts_text, agent_id),
            )
            cur.execute("DELETE FROM agent_models WHERE agent_id = ?", (agent_id,))
            # A repeated id keeps its last document (and that document's position).
            cur.executemany(
                "INSERT OR REPLACE INTO agent_models (agent_id, position, model_id, doc)"
                " VALUES (?, ?, ?, ?)",
                rows,
            )
        return True

    def set_agent_status(self, agent_id: str, status: str) -> None:
        """Mark an agent ``"up"`` or ``"down"``; raises KeyError for an unknown agent."""
        if status not in AGENT_STATUSES:
            raise ValueError(f"status must be one of {AGENT_STATUSES}, got {status!r}")
        with self._write() as cur:
            cur.execute("UPDATE agents SET status = ? WHERE id = ?", (status, agent_id))
            if cur.rowcount == 0:
                raise KeyError(agent_id)

    def agents(self) -> list[AgentRecord]:
        """Every registered agent whose facts read, by id."""
        rows = self._read_all(
            "SELECT id, url, role, facts, status, registered_at, last_heartbeat"
            " FROM agents ORDER BY id",
            (),
        )
        return [rec for row in rows if (rec := self._agent(row)) is not None]

    def agent(self, agent_id: str) -> AgentRecord | None:
        """One agent, or None if it never registered (or its stored facts do not read)."""
        row = self._read_one(
            "SELECT id, url, role, facts, status, registered_at, last_heartbeat"
            " FROM agents WHERE id = ?",
            (agent_id,),
        )
        return None if row is None else self._agent(row)

    def agent_models(self, agent_id: str) -> list[ModelStatus]:
        """The model statuses of the agent's last heartbeat, in its order (empty for an
        unknown agent or before the first heartbeat)."""
        rows = self._read_all(
            "SELECT model_id, doc FROM agent_models WHERE agent_id = ? ORDER BY position",
            (agent_id,),
        )
        return [
            m
            for model_id, text in rows
            if (
                m := self._load(
                    text, ModelStatus, f"status of {model_id} on {agent_id}", _UNTIL_HEARTBEAT
                )
            )
            is not None
        ]

    def _agent(self, row: tuple[Any, ...]) -> AgentRecord | None:
        facts = self._load(
            row[3],
            HostFacts,
            f"facts of agent {row[0]}",
            "the agent is unknown until it registers again (its next heartbeat is told to)",
        )
        if facts is None:
            return None
        return AgentRecord(
            id=row[0],
            url=row[1],
            role=row[2],
            facts=facts,
            status=row[4],
            registered_at=float(row[5]),
            last_heartbeat=None if row[6] is None else float(row[6]),
        )

    # ---------------------------------------------------------------- profiles

    def put_profile(self, agent_id: str, model_id: str, profile: ModelProfile, now: float) -> None:
        """Store (or replace) the profile of ``model_id`` measured on ``agent_id``.

        The agent need not be registered (profiles may come from the profiles directory).
        """
        self.put_profiles(agent_id, [(model_id, profile)], now)

    def put_profiles(
        self, agent_id: str, profiles: Sequence[tuple[str, ModelProfile]], now: float
    ) -> None:
        """`put_profile` for several models of one agent, in one transaction."""
        if not agent_id or any(not model_id for model_id, _ in profiles):
            raise ValueError("agent_id and model_id must be non-empty")
        rows = [
            (agent_id, m, _dump_model(p, ModelProfile, "profile"), float(now)) for m, p in profiles
        ]
        if not rows:
            return
        with self._write() as cur:
            cur.executemany(
                "INSERT INTO profiles (agent_id, model_id, doc, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(agent_id, model_id) DO UPDATE SET doc = excluded.doc,"
                " updated_at = excluded.updated_at",
                rows,
            )

    def profiles(self) -> list[tuple[str, str, ModelProfile]]:
        """Every profile that reads as (agent id, model id, profile), by agent then model."""
        rows = self._read_all(
            "SELECT agent_id, model_id, doc FROM profiles ORDER BY agent_id, model_id", ()
        )
        out = []
        for agent_id, model_id, text in rows:
            p = self._load(text, ModelProfile, f"profile of {model_id} on {agent_id}", _UNTIL_SENT)
            if p is not None:
                out.append((agent_id, model_id, p))
        return out

    def profile(self, agent_id: str, model_id: str) -> ModelProfile | None:
        """One profile, or None (none stored, or it does not read)."""
        row = self._read_one(
            "SELECT doc FROM profiles WHERE agent_id = ? AND model_id = ?", (agent_id, model_id)
        )
        if row is None:
            return None
        return self._load(row[0], ModelProfile, f"profile of {model_id} on {agent_id}", _UNTIL_SENT)

    # ---------------------------------------------------------------- state

    def save_state(self, key: str, doc: dict) -> None:
        """Store a JSON document under ``key`` (e.g. the rate estimator's snapshot)."""
        if not key:
            raise ValueError("key must be non-empty")
        text = _dumps(doc, "state")
        with self._write() as cur:
            cur.execute(
                "INSERT INTO state (key, doc) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET doc = excluded.doc",
                (key, text),
            )

    def load_state(self, key: str) -> dict | None:
        """The document saved under ``key``, or None."""
        row = self._read_one("SELECT doc FROM state WHERE key = ?", (key,))
        return None if row is None else _loads(row[0])

    # ---------------------------------------------------------------- decisions

    def save_decision(self, placement: Placement, now: float) -> int:
        """Append a placement decision made at ``now``; returns its id (ids only grow).

        Only the last `KEEP_DECISIONS` (100) decisions are kept.
        """
        text = _dump_model(placement, Placement, "decision")
        with self._write() as cur:
            cur.execute("INSERT INTO decisions (at, doc) VALUES (?, ?)", (float(now), text))
            new_id = cur.lastrowid
            if new_id is None:  # cannot happen after an INSERT; keeps the type exact
                raise RuntimeError("SQLite returned no id for the new decision")
            cur.execute("DELETE FROM decisions WHERE id <= ?", (new_id - KEEP_DECISIONS,))
        return int(new_id)

    def last_decision(self) -> StoredDecision | None:
        """The latest decision, or None (none yet, or it does not read)."""
        row = self._read_one("SELECT id, at, doc FROM decisions ORDER BY id DESC LIMIT 1", ())
        return None if row is None else self._decision(row)

    def decisions(self, limit: int = KEEP_DECISIONS) -> list[StoredDecision]:
        """The latest ``limit`` decisions that read, newest first."""
        rows = self._read_all(
            "SELECT id, at, doc FROM decisions ORDER BY id DESC LIMIT ?", (int(limit),)
        )
        return [d for row in rows if (d := self._decision(row)) is not None]

    def _decision(self, row: tuple[Any, ...]) -> StoredDecision | None:
        placement = self._load(
            row[2], Placement, f"decision #{row[0]}", "it is left out (history, restart)"
        )
        return None if placement is None else StoredDecision(int(row[0]), float(row[1]), placement)
