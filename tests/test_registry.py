"""The SQLite registry: round trips, restart from the file, threads, decision retention."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from genedge.contract import HostFacts, ModelProfile, ModelStatus, Placement
from orchestrator.adapters.registry import (
    KEEP_DECISIONS,
    AgentRecord,
    Registry,
    RegistryDamaged,
)
from orchestrator.core.rates import PoolStats, RateEstimator


def facts(host_id: str, **kw: object) -> HostFacts:
    doc = {
        "host_id": host_id,
        "hostname": "box",
        "fingerprint": "fp",
        "description": "a test host",
        "device": "cuda:0",
        "gpu_total_bytes": 80 << 30,
        "device_budget_bytes": 70 << 30,
        "device_used_bytes": 0,
        "ram_total_bytes": 64 << 30,
        "ram_available_bytes": 32 << 30,
        "cache_budget_bytes": 16 << 30,
        "cache_used_bytes": 0,
        "disk_total_bytes": 1 << 40,
        "disk_free_bytes": 1 << 39,
    }
    return HostFacts.model_validate({**doc, **kw})


FACTS = facts("e1")


def model_doc(model_id: str, level: str = "stored", **kw: object) -> ModelStatus:
    doc = {
        "id": model_id,
        "kind": "text",
        "format": "transformers",
        "architecture": "GPT2LMHeadModel",
        "level": level,
        "state": "ready",
        "target_level": "stored" if level in ("absent", "pooled") else level,
        "progress": 1.0,
        "pool_hits": 0,
    }
    return ModelStatus.model_validate({**doc, **kw})


def profile(model_id: str, **kw: object) -> ModelProfile:
    doc = {
        "model_id": model_id,
        "kind": "text",
        "architecture": "GPT2LMHeadModel",
        "host_fingerprint": "fp",
        "file_digest": "d",
        "device": "cuda:0",
        "dtype": "float16",
        "params": 1000,
        "storage_bytes": 2000,
        "resident_bytes": 2000,
        "peak_bytes": 3000,
        "memory_method": "cuda_allocated",
        "load_cold_s": 2.0,
        "load_warm_s": 1.0,
        "load_ram_s": 0.5,
        "generation_s": 0.25,
        "generation_what": "one reply",
        "measured_at": 1.0,
    }
    return ModelProfile.model_validate({**doc, **kw})


def decision(n: int, **kw: object) -> Placement:
    """A stored decision told apart by `n` (its computed_at)."""
    return Placement.model_validate(
        {"algorithm": "greedy", "computed_at": float(n), "cost": None, "trigger": "slot", **kw}
    )


@pytest.fixture
def reg() -> Iterator[Registry]:
    r = Registry(":memory:")
    yield r
    r.close()


def test_agents_round_trip(reg: Registry) -> None:
    assert reg.agents() == []
    assert reg.agent("e1") is None
    reg.upsert_agent("e1", "http://e1:9000", "edge", FACTS, now=10.0)
    reg.upsert_agent("cloud", "http://cloud:9000", "cloud", facts("cloud"), now=11.0)
    assert reg.agent("e1") == AgentRecord(
        id="e1",
        url="http://e1:9000",
        role="edge",
        facts=FACTS,
        status="up",
        registered_at=10.0,
        last_heartbeat=10.0,
    )
    assert [a.id for a in reg.agents()] == ["cloud", "e1"]
    assert reg.agent_models("e1") == []

    models = [model_doc("sd", "resident", memory_bytes=123), model_doc("llm")]
    assert reg.heartbeat("e1", None, models, now=15.0) is True
    rec = reg.agent("e1")
    assert rec is not None and rec.last_heartbeat == 15.0 and rec.facts == FACTS
    assert reg.agent_models("e1") == models  # the agent's order, whole documents

    # A heartbeat replaces the model list whole and, when given, the facts.
    reg.set_agent_status("e1", "down")
    assert reg.agent("e1").status == "down"  # type: ignore[union-attr]
    new_facts = FACTS.model_copy(update={"gpu_free_bytes": 5})
    assert reg.heartbeat("e1", new_facts, [model_doc("llm", "cached")], now=20.0)
    rec = reg.agent("e1")
    assert rec is not None
    assert (rec.status, rec.last_heartbeat, rec.facts) == ("up", 20.0, new_facts)
    assert reg.agent_models("e1") == [model_doc("llm", "cached")]
    assert reg.heartbeat("e1", None, [], now=21.0)
    assert reg.agent_models("e1") == []

    # Re-registration: new url and facts, up again, registered_at moves.
    reg.set_agent_status("e1", "down")
    reg.upsert_agent("e1", "http://e1:9001", "edge", facts("e1", hostname="new"), now=30.0)
    rec = reg.agent("e1")
    assert rec is not None
    assert (rec.url, rec.status, rec.registered_at, rec.facts) == (
        "http://e1:9001",
        "up",
        30.0,
        facts("e1", hostname="new"),
    )


def test_unknown_agent_and_bad_input(reg: Registry) -> None:
    assert reg.heartbeat("ghost", FACTS, [model_doc("sd")], now=1.0) is False
    assert reg.agents() == []
    assert reg.agent_models("ghost") == []
    with pytest.raises(KeyError):
        reg.set_agent_status("ghost", "down")
    reg.upsert_agent("e1", "http://e1", "edge", facts("e1"), now=1.0)
    with pytest.raises(ValueError):
        reg.set_agent_status("e1", "sideways")
    with pytest.raises(ValueError):
        reg.upsert_agent("e2", "http://e2", "fog", facts("e2"), now=1.0)
    # Untyped documents are refused: only the contract's models go in.
    with pytest.raises(TypeError, match="ModelStatus"):
        reg.heartbeat("e1", None, [{"id": "sd", "level": "stored"}], now=2.0)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="HostFacts"):
        reg.upsert_agent("e1", "http://e1", "edge", {"host_id": "e1"}, now=2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ModelProfile"):
        reg.put_profile("e1", "sd", {"model_id": "sd"}, now=2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Placement"):
        reg.save_decision({"algorithm": "greedy"}, now=2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        reg.save_state("k", [1, 2])  # type: ignore[arg-type]
    # The refused writes left nothing behind.
    rec = reg.agent("e1")
    assert rec is not None and rec.last_heartbeat == 1.0 and rec.facts == facts("e1")
    assert reg.profiles() == [] and reg.last_decision() is None
    assert reg.load_state("k") is None


def test_profiles_round_trip(reg: Registry) -> None:
    assert reg.profiles() == []
    assert reg.profile("e1", "sd") is None
    p1 = profile("sd", load_cold_s=1.5, peak_bytes=7 << 30, notes=["a"])
    reg.put_profile("e1", "sd", p1, now=1.0)
    reg.put_profile("e1", "llm", profile("llm"), now=1.0)
    reg.put_profile("e0", "sd", profile("sd", host_fingerprint="e0"), now=1.0)
    assert reg.profile("e1", "sd") == p1
    assert [(a, m) for a, m, _ in reg.profiles()] == [("e0", "sd"), ("e1", "llm"), ("e1", "sd")]
    p2 = p1.model_copy(update={"load_cold_s": 1.2})
    reg.put_profile("e1", "sd", p2, now=2.0)
    assert reg.profile("e1", "sd") == p2
    assert len(reg.profiles()) == 3


def test_state_round_trip(reg: Registry) -> None:
    assert reg.load_state("rates") is None
    clock = lambda: 100.0  # noqa: E731
    est = RateEstimator(clock=clock)
    est.observe("sd", 7)
    pool = PoolStats()
    pool.observe("sd", "e1", 3, 1)
    reg.save_state("rates", est.snapshot())
    reg.save_state("pool", pool.snapshot())
    back = RateEstimator.restore(reg.load_state("rates") or {}, clock=clock)
    assert back.counts_in_slot() == {"sd": 7}
    assert PoolStats.restore(reg.load_state("pool") or {}).miss_probability("sd", "e1") == 0.25
    reg.save_state("rates", {"v": 2})
    assert reg.load_state("rates") == {"v": 2}


def test_decisions_keep_only_the_last_100(reg: Registry) -> None:
    assert reg.last_decision() is None
    ids = [reg.save_decision(decision(n, hosts=["e1"]), now=n) for n in range(250)]
    assert ids == sorted(ids) and len(set(ids)) == 250
    last = reg.last_decision()
    assert last == (ids[-1], 249.0, decision(249, hosts=["e1"]))
    kept = reg.decisions(limit=1000)
    assert len(kept) == KEEP_DECISIONS == 100
    assert [d.placement.computed_at for d in kept] == list(range(249, 149, -1))
    assert reg.decisions(limit=3)[0] == last


def test_reopen_restores_everything(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "orch.sqlite"
    with Registry(path) as reg:
        reg.upsert_agent("e1", "http://e1", "edge", FACTS, now=1.0)
        reg.heartbeat("e1", None, [model_doc("sd", "resident")], now=2.0)
        reg.set_agent_status("e1", "down")
        reg.put_profile("e1", "sd", profile("sd", generation_s=0.5), now=3.0)
        reg.save_state("rates", {"rates": {"sd": 1.5}})
        for n in range(3):
            did = reg.save_decision(decision(n), now=10.0 + n)
        assert reg.schema_version() == 1
    assert path.exists()

    reg = Registry(path)  # the orchestrator restarts
    try:
        rec = reg.agent("e1")
        assert rec == AgentRecord("e1", "http://e1", "edge", FACTS, "down", 1.0, 2.0)
        assert reg.agent_models("e1") == [model_doc("sd", "resident")]
        assert reg.profiles() == [("e1", "sd", profile("sd", generation_s=0.5))]
        assert reg.load_state("rates") == {"rates": {"sd": 1.5}}
        assert reg.last_decision() == (did, 12.0, decision(2))
        assert reg.save_decision(decision(3), now=13.0) == did + 1
        mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode.lower() == "wal"
    finally:
        reg.close()
    reg.close()  # idempotent
    with pytest.raises(sqlite3.ProgrammingError):
        reg.agents()


def _insert_raw(
    path: Path,
    agents: list[tuple[str, dict]],
    statuses: list[dict],
    profiles: list[dict],
    decisions: list[dict],
) -> None:
    """Rows as the registry stored them before it was typed: `json.dumps` of documents."""
    conn = sqlite3.connect(path)
    for agent_id, doc in agents:
        conn.execute(
            "INSERT INTO agents VALUES (?, ?, 'edge', ?, 'up', 1.0, 2.0)",
            (agent_id, f"http://{agent_id}", json.dumps(doc)),
        )
    for i, doc in enumerate(statuses):
        conn.execute(
            "INSERT INTO agent_models VALUES ('e1', ?, ?, ?)", (i, doc["id"], json.dumps(doc))
        )
    for doc in profiles:
        conn.execute(
            "INSERT INTO profiles VALUES ('e1', ?, ?, 3.0)", (doc["model_id"], json.dumps(doc))
        )
    for n, doc in enumerate(decisions):
        conn.execute("INSERT INTO decisions (at, doc) VALUES (?, ?)", (10.0 + n, json.dumps(doc)))
    conn.commit()
    conn.close()


def test_rows_an_older_orchestrator_wrote_still_read(tmp_path: Path) -> None:
    """Documents without the fields the contract gained since (they take their defaults)
    and with one it no longer has (ignored) read as the contract's models."""
    path = tmp_path / "orch.sqlite"
    Registry(path).close()
    facts_doc = FACTS.model_dump(mode="json")
    del facts_doc["repository_url"], facts_doc["fetch_Bps"]
    status = model_doc("sd", "resident", in_flight=2)
    status_doc = status.model_dump(mode="json")
    for gained in ("origin", "evictable", "pinned_level", "priority", "fetch"):
        del status_doc[gained]
    old = decision(7, hosts=["e1"])
    _insert_raw(
        path,
        agents=[("e1", {**facts_doc, "a_field_since_removed": 1})],
        statuses=[status_doc],
        profiles=[profile("sd").model_dump(mode="json")],
        decisions=[old.model_dump(mode="json")],
    )
    with Registry(path) as reg:
        assert reg.agent("e1") == AgentRecord("e1", "http://e1", "edge", FACTS, "up", 1.0, 2.0)
        assert reg.agent_models("e1") == [status]
        assert reg.profile("e1", "sd") == profile("sd")
        last = reg.last_decision()
        assert last is not None and last.placement == old and last.at == 10.0


def test_a_stored_document_that_does_not_read_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "orch.sqlite"
    Registry(path).close()
    good = model_doc("llm")
    _insert_raw(
        path,
        agents=[("e1", FACTS.model_dump(mode="json")), ("e2", {"host_id": "e2"})],
        statuses=[
            {**model_doc("sd").model_dump(mode="json"), "level": "floating"},
            good.model_dump(mode="json"),
        ],
        profiles=[{"model_id": "sd", "load_cold_s": 1.0}],
        decisions=[decision(1).model_dump(mode="json"), {"n": 2}],
    )
    with caplog.at_level("WARNING", logger="orchestrator.registry"), Registry(path) as reg:
        assert [a.id for a in reg.agents()] == ["e1"]
        assert reg.agent("e2") is None  # unknown: its next heartbeat is told to register
        assert reg.agent_models("e1") == [good]
        assert reg.profile("e1", "sd") is None and reg.profiles() == []
        assert reg.last_decision() is None  # the latest does not read: no decision to restore
        assert [d.placement for d in reg.decisions()] == [decision(1)]
        reg.upsert_agent("e2", "http://e2", "edge", facts("e2"), now=5.0)  # re-registered
        assert reg.agent("e2") is not None
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 4 and all("cannot read" in w for w in warned)
    # once per document, though e2's facts were read twice and the profile twice
    assert sum("facts of agent e2" in w and "registers again" in w for w in warned) == 1
    assert sum("profile of sd on e1" in w for w in warned) == 1


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "orch.sqlite"
    Registry(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version (version) VALUES (99)")
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="schema version 99"):
        Registry(path)


def _filled(path: Path) -> None:
    with Registry(path) as reg:
        for n in range(200):
            reg.save_state(f"k{n}", {"pad": "x" * 500})
    for extra in ("-wal", "-shm"):
        Path(f"{path}{extra}").unlink(missing_ok=True)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "overwritten page"])
def test_a_damaged_file_is_refused_in_one_line(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "orch.sqlite"
    _filled(path)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a database at all " * 400)
    else:
        path.write_bytes(data[:4096] + b"\xff" * 4096 + data[8192:])
    with pytest.raises(RegistryDamaged) as info:
        Registry(path)
    text = str(info.value)
    assert str(path) in text and "move it aside" in text and "\n" not in text


def test_the_cli_exits_4_with_one_line_on_a_damaged_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from launcher.cli import EXIT_REGISTRY_DAMAGED, main

    path = tmp_path / "orch.sqlite"
    path.write_bytes(b"garbage" * 1000)
    assert main(["orchestrator", "--db", str(path), "--port", "0"]) == EXIT_REGISTRY_DAMAGED == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "damaged" in err[0] and "Traceback" not in err[0]


def test_an_empty_or_missing_file_is_a_new_registry_said_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    with caplog.at_level("INFO", logger="orchestrator.registry"):
        Registry(empty).close()
        Registry(tmp_path / "missing.sqlite").close()
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "0 bytes" in warned[0].getMessage()
    assert any("no registry at" in r.getMessage() for r in caplog.records)
    with Registry(empty) as reg:  # now a registry
        assert reg.schema_version() == 1


def test_a_failed_write_is_rolled_back_whole(reg: Registry) -> None:
    reg.upsert_agent("e1", "http://e1", "edge", FACTS, now=1.0)
    reg.heartbeat("e1", None, [model_doc("sd")], now=2.0)

    class Boom(Exception):
        pass

    # Fail in the middle of a transaction (after the DELETE of the model list).
    with pytest.raises(Boom), reg._write() as cur:
        cur.execute("DELETE FROM agent_models WHERE agent_id = 'e1'")
        cur.execute("UPDATE agents SET last_heartbeat = 99 WHERE id = 'e1'")
        raise Boom
    assert reg.agent_models("e1") == [model_doc("sd")]
    assert reg.agent("e1").last_heartbeat == 2.0  # type: ignore[union-attr]
    reg.save_state("still", {"ok": True})  # the connection is usable afterwards
    assert reg.load_state("still") == {"ok": True}


def test_concurrent_writes_do_not_corrupt(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "orch.sqlite")
    n_threads, n_ops = 8, 40
    errors: list[BaseException] = []
    start = threading.Barrier(n_threads)

    def work(t: int) -> None:
        try:
            start.wait()
            agent = f"e{t}"
            reg.upsert_agent(agent, f"http://{agent}", "edge", facts(agent), now=0.0)
            for i in range(n_ops):
                models = [model_doc(f"m{j}", in_flight=i) for j in range(5)]
                assert reg.heartbeat(agent, facts(agent, gpu_free_bytes=i), models, now=float(i))
                reg.put_profile(agent, f"m{i % 5}", profile(f"m{i % 5}", params=i), now=float(i))
                reg.save_state(f"k{t}", {"i": i})
                reg.save_decision(decision(i, trigger=f"t{t}"), now=float(i))
                reg.agents()
                reg.last_decision()
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    try:
        assert len(reg.agents()) == n_threads
        for t in range(n_threads):
            rec = reg.agent(f"e{t}")
            assert rec is not None and rec.facts == facts(f"e{t}", gpu_free_bytes=n_ops - 1)
            docs = reg.agent_models(f"e{t}")
            assert [d.id for d in docs] == [f"m{j}" for j in range(5)]
            assert all(d.in_flight == n_ops - 1 for d in docs)
            assert reg.load_state(f"k{t}") == {"i": n_ops - 1}
        assert len(reg.profiles()) == n_threads * 5
        decisions = reg.decisions(limit=1000)
        assert len(decisions) == KEEP_DECISIONS
        assert decisions[0][0] == n_threads * n_ops
    finally:
        reg.close()
    conn = sqlite3.connect(tmp_path / "orch.sqlite")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert json.loads(conn.execute("SELECT doc FROM state WHERE key = 'k0'").fetchone()[0]) == {
        "i": n_ops - 1
    }
    conn.close()


async def test_a_restarted_orchestrator_gives_known_agents_a_liveness_window(
    tmp_path: Path,
) -> None:
    """Agents heartbeating a restarted orchestrator must not be marked down for the time it
    was away: their liveness window starts when the orchestrator does."""
    import httpx

    from orchestrator.service import Orchestrator
    from orchestrator.settings import OrchestratorSettings

    now = [1000.0]
    reg = Registry(tmp_path / "o.sqlite")
    reg.upsert_agent("edge-1", "http://e", "edge", facts("edge-1"), now=10.0)  # seen long ago
    settings = OrchestratorSettings(
        db_path=tmp_path / "o.sqlite", heartbeat_interval_s=0.05, missed_heartbeats=3
    )
    async with httpx.AsyncClient() as http:
        o = Orchestrator(settings, reg, http, clock=lambda: now[0])
        await o.start()
        try:
            await asyncio.sleep(0.2)  # a few liveness passes
            assert reg.agent("edge-1").status == "up"  # type: ignore[union-attr]
            now[0] += 1.0  # then silence past 3 intervals: down
            await asyncio.sleep(0.2)
            assert reg.agent("edge-1").status == "down"  # type: ignore[union-attr]
        finally:
            await o.stop()
            reg.close()
