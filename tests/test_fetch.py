"""Level `absent` (issue 15): an edge agent fetches a model it lacks from a real cloud agent
serving its store over loopback; checksums, resume, disk-space refusal and disk eviction."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from edge_agent.adapters.fetch import MARKER_FILE, STAGING_DIR, Fetcher
from edge_agent.adapters.store import folder_files
from edge_agent.core.manager import ModelManager
from edge_agent.errors import UnknownModel
from genedge.contract import FetchProgress, Level, ModelManifest, ModelOrigin, ModelState
from tests.conftest import AGENT_TOKEN, agent_settings, poll_status, running_agent
from tests.fakes import FakeDevice, FakeLoader, manifest


class FaultyTransport(httpx.AsyncBaseTransport):
    """A real loopback transport with injected faults on file downloads: `drop = (path, n)`
    ends the first body of file `path` after `n` bytes with a read error (once); `flip_at`
    flips one byte of every file body. Records (path, Range header) of each file request."""

    def __init__(self, drop: tuple[str, int] | None = None, flip_at: int | None = None) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.drop_once = drop
        self.flip_at = flip_at
        self.requests: list[tuple[str, str | None]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if not request.url.path.endswith("/file"):
            return response
        path = request.url.params.get("path", "")
        self.requests.append((path, request.headers.get("range")))
        drop = None
        if self.drop_once is not None and self.drop_once[0] == path:
            drop, self.drop_once = self.drop_once[1], None
        flip = self.flip_at
        inner = response.stream

        class Stream(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                seen = 0
                async for chunk in inner:  # type: ignore[union-attr]
                    if flip is not None and seen <= flip < seen + len(chunk):
                        b = bytearray(chunk)
                        b[flip - seen] ^= 0xFF
                        chunk = bytes(b)
                    if drop is not None and seen + len(chunk) > drop:
                        yield chunk[: drop - seen]
                        raise httpx.ReadError("connection dropped by the test")
                    seen += len(chunk)
                    yield chunk

            async def aclose(self) -> None:
                await inner.aclose()  # type: ignore[union-attr]

        return httpx.Response(
            response.status_code, headers=response.headers, stream=Stream(), request=request
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


def fake_loader() -> FakeLoader:
    return FakeLoader(FakeDevice(8 * 1024**3))


@asynccontextmanager
async def cloud_and_edge(
    store: Path,
    tmp: Path,
    transport: httpx.AsyncBaseTransport | None = None,
    cloud_kw: dict[str, object] | None = None,
    **edge_kw: object,
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """A cloud agent serving `store` and an edge agent with an empty store whose repository
    is the cloud agent, both real uvicorn servers on loopback, behind the agent token."""
    cloud_settings = agent_settings(
        store,
        tmp / "cloud",
        host_id="cloud",
        role="cloud",
        agent_token=AGENT_TOKEN,
        **(cloud_kw or {}),
    )
    async with running_agent(cloud_settings, loader=fake_loader()) as cloud:
        kw: dict[str, object] = dict(
            host_id="edge", agent_token=AGENT_TOKEN, repository_url=str(cloud.base_url)
        )
        kw.update(edge_kw)
        edge_settings = agent_settings(tmp / "edge-store", tmp / "edge", **kw)
        fetch_client = httpx.AsyncClient(transport=transport or httpx.AsyncHTTPTransport())
        try:
            async with running_agent(
                edge_settings, loader=fake_loader(), fetch_client=fetch_client
            ) as edge:
                fetcher = edge.app.state.agent.manager.fetcher  # type: ignore[attr-defined]
                fetcher.retry_backoff_s = 0.0
                yield cloud, edge
        finally:
            await fetch_client.aclose()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_of(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha(p) for p in folder_files(folder)}


def biggest_file(folder: Path) -> tuple[str, int]:
    p = max(folder_files(folder), key=lambda p: p.stat().st_size)
    return p.relative_to(folder).as_posix(), p.stat().st_size


async def put_level(edge: httpx.AsyncClient, model: str, level: str = "stored") -> httpx.Response:
    return await edge.put(f"/v1/models/{model}/level", json={"level": level, "wait": True})


# ----------------------------------------------------------------------------- repository


async def test_repository_routes(store: Path, tmp_path: Path) -> None:
    settings = agent_settings(store, tmp_path, role="cloud", agent_token=AGENT_TOKEN)
    async with running_agent(settings, loader=fake_loader()) as cloud:
        listed = (await cloud.get("/v1/repository")).json()["data"]
        assert {m["model_id"] for m in listed} == {"tiny-llama", "tiny-gpt2", "tiny-sd"}
        man = (await cloud.get("/v1/repository/tiny-llama/manifest")).json()
        assert {f["path"]: f["sha256"] for f in man["files"]} == files_of(store / "tiny-llama")
        assert man["total_bytes"] == sum(f["size"] for f in man["files"])
        rel, size = biggest_file(store / "tiny-llama")
        r = await cloud.get(
            "/v1/repository/tiny-llama/file", params={"path": rel}, headers={"range": "bytes=10-"}
        )
        assert r.status_code == 206
        assert r.content == (store / "tiny-llama" / rel).read_bytes()[10:]
        assert r.headers["content-range"] == f"bytes 10-{size - 1}/{size}"
        # Only the manifest's files: no way out of the folder, no hidden files.
        (store / "tiny-llama" / ".secret").write_text("x")
        for bad in ("../tiny-gpt2/config.json", ".secret", "/etc/passwd", "nope.json"):
            r = await cloud.get("/v1/repository/tiny-llama/file", params={"path": bad})
            assert r.status_code == 404, bad
            assert r.json()["error"]["type"] == "model_not_found"
        assert (await cloud.get("/v1/repository/nope/manifest")).status_code == 404
        async with httpx.AsyncClient(base_url=str(cloud.base_url)) as anonymous:
            assert (await anonymous.get("/v1/repository")).status_code == 401
            r = await anonymous.get("/v1/repository/tiny-llama/file", params={"path": rel})
            assert r.status_code == 401


# ----------------------------------------------------------------------------- fetching


async def test_fetch_from_cloud_agent(store: Path, tmp_path: Path) -> None:
    async with cloud_and_edge(store, tmp_path) as (_, edge):
        assert (await edge.get("/v1/models")).json()["data"] == []
        r = await put_level(edge, "tiny-gpt2", "cached")
        assert r.status_code == 200, r.text
        st = r.json()
        assert st["level"] == "cached" and st["state"] == "ready"
        assert st["origin"] == "fetched" and st["placed"] is True
        fetch = st["fetch"]
        total = sum(p.stat().st_size for p in folder_files(store / "tiny-gpt2"))
        assert fetch["bytes_total"] == fetch["bytes_done"] == total
        assert fetch["resumed_bytes"] == 0 and fetch["finished_at"] is not None
        fetched = tmp_path / "edge-store" / ".fetched" / "tiny-gpt2"
        assert files_of(fetched) == files_of(store / "tiny-gpt2")
        marker = json.loads((fetched / MARKER_FILE).read_text())
        assert marker["origin"] == "fetched" and marker["model_id"] == "tiny-gpt2"
        assert not (tmp_path / "edge-store" / ".fetched" / STAGING_DIR / "tiny-gpt2").exists()
        facts = (await edge.get("/v1/host")).json()
        assert facts["repository_url"].rstrip("/") == str(edge_repo(edge)).rstrip("/")
        assert facts["fetch_Bps"] > 0
        metrics = (await edge.get("/metrics")).text
        assert f"genedge_fetch_bytes_total {float(total)}" in metrics
        assert 'genedge_fetches_total{model="tiny-gpt2",outcome="ok"} 1.0' in metrics
        # A model neither held nor offered: the same 404 as without a repository.
        r = await put_level(edge, "no-such-model")
        assert r.status_code == 404 and "does not offer" in r.json()["error"]["message"]

    # A restart finds the fetched model again, still `fetched`.
    settings = agent_settings(tmp_path / "edge-store", tmp_path / "edge2")
    async with running_agent(settings, loader=fake_loader()) as again:
        st = (await again.get("/v1/models/tiny-gpt2/status")).json()
        assert st["level"] == "stored" and st["origin"] == "fetched"
        assert st["evictable"] is True and st["placed"] is False  # no command since the restart
        r = await put_level(again, "tiny-llama")  # no repository here
        assert r.status_code == 404


def edge_repo(edge: httpx.AsyncClient) -> str:
    return str(edge.app.state.agent.settings.repository_url)  # type: ignore[attr-defined]


async def test_corrupted_byte_is_rejected(store: Path, tmp_path: Path) -> None:
    rel, size = biggest_file(store / "tiny-llama")
    transport = FaultyTransport(flip_at=size - 1)  # the last byte of the biggest file
    async with cloud_and_edge(store, tmp_path, transport) as (_, edge):
        r = await put_level(edge, "tiny-llama")
        assert r.status_code == 503
        st = r.json()
        assert st["state"] == "failed" and st["level"] == "absent"
        assert "sha256 mismatch" in st["failed_reason"] and rel in st["failed_reason"]
        # no half model anywhere the store looks, and the bad partial is gone
        fetch_dir = tmp_path / "edge-store" / ".fetched"
        assert not (fetch_dir / "tiny-llama").exists()
        assert not list((fetch_dir / STAGING_DIR / "tiny-llama").rglob("*.part"))
        assert (await edge.get("/v1/models/tiny-llama/status")).json()["state"] == "failed"
        chat = await edge.post(
            "/v1/chat/completions",
            json={"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.status_code == 503
        metrics = (await edge.get("/metrics")).text
        assert 'genedge_fetches_total{model="tiny-llama",outcome="failed"} 1.0' in metrics
        # Without the fault, setting the level again completes it.
        transport.flip_at = None
        r = await put_level(edge, "tiny-llama")
        assert r.status_code == 200, r.text
        assert files_of(fetch_dir / "tiny-llama") == files_of(store / "tiny-llama")


async def test_dropped_connection_resumes(store: Path, tmp_path: Path) -> None:
    rel, size = biggest_file(store / "tiny-sd")
    half = size // 2
    transport = FaultyTransport(drop=(rel, half))
    async with cloud_and_edge(store, tmp_path, transport) as (_, edge):
        r = await put_level(edge, "tiny-sd")
        assert r.status_code == 200, r.text
        fetched = tmp_path / "edge-store" / ".fetched" / "tiny-sd"
        assert files_of(fetched) == files_of(store / "tiny-sd")
        # the file was asked for again from where the connection dropped, within one fetch
        assert [rng for p, rng in transport.requests if p == rel] == [None, f"bytes={half}-"]
        fetch = r.json()["fetch"]
        assert fetch["bytes_done"] == fetch["bytes_total"]
        assert fetch["resumed_bytes"] == 0  # nothing was kept from an earlier attempt


async def test_failed_fetch_resumes_when_asked_again(store: Path, tmp_path: Path) -> None:
    rel, size = biggest_file(store / "tiny-llama")
    half = size // 2
    transport = FaultyTransport(drop=(rel, half))
    async with cloud_and_edge(store, tmp_path, transport, fetch_retries=0) as (_, edge):
        r = await put_level(edge, "tiny-llama")
        assert r.status_code == 503
        reason = r.json()["failed_reason"]
        assert "connection lost" in reason and rel in reason
        stage = tmp_path / "edge-store" / ".fetched" / STAGING_DIR / "tiny-llama"
        assert (stage / (rel + ".part")).stat().st_size == half  # what arrived is kept
        assert not (tmp_path / "edge-store" / ".fetched" / "tiny-llama").exists()
        r = await put_level(edge, "tiny-llama")
        assert r.status_code == 200, r.text
        assert [rng for p, rng in transport.requests if p == rel] == [None, f"bytes={half}-"]
        assert r.json()["fetch"]["resumed_bytes"] >= half
        fetched = tmp_path / "edge-store" / ".fetched" / "tiny-llama"
        assert files_of(fetched) == files_of(store / "tiny-llama")


async def test_full_disk_refused_before_any_byte(store: Path, tmp_path: Path) -> None:
    transport = FaultyTransport()
    async with cloud_and_edge(store, tmp_path, transport) as (_, edge):
        fetcher: Fetcher = edge.app.state.agent.manager.fetcher  # type: ignore[attr-defined]
        fetcher.disk_free = lambda path: 1_000_000  # a full disk: 1 MB free
        r = await put_level(edge, "tiny-sd")
        assert r.status_code == 503
        reason = r.json()["failed_reason"]
        assert "needs" in reason and "GB free" in reason and "nothing was written" in reason
        assert transport.requests == []  # not one file request
        stage = tmp_path / "edge-store" / ".fetched" / STAGING_DIR / "tiny-sd"
        assert not [p for p in stage.rglob("*") if p.is_file()]


async def test_eviction_makes_room_for_a_fetch(store: Path, tmp_path: Path) -> None:
    """Real deletion: with no room left, fetching a model deletes another one once the
    decision no longer places it (`absent`), never while it is placed."""
    async with cloud_and_edge(store, tmp_path) as (_, edge):
        fetcher: Fetcher = edge.app.state.agent.manager.fetcher  # type: ignore[attr-defined]
        fetch_dir = tmp_path / "edge-store" / ".fetched"
        fetcher.reserve_bytes = 0
        room = [10**12]

        def used() -> int:
            return sum(p.stat().st_size for p in fetch_dir.rglob("*") if p.is_file())

        fetcher.disk_free = lambda path: room[0] - used()
        assert (await put_level(edge, "tiny-sd")).status_code == 200
        assert (await put_level(edge, "tiny-llama")).status_code == 200
        room[0] = used() + 1  # the disk is full
        # both placed: nothing may be deleted, and the fetch is refused
        r = await put_level(edge, "tiny-gpt2")
        assert r.status_code == 503 and "nothing evictable" in r.json()["failed_reason"]
        assert (fetch_dir / "tiny-sd").exists() and (fetch_dir / "tiny-llama").exists()
        # the decision drops tiny-sd here: it stays stored, now evictable
        r = await put_level(edge, "tiny-sd", "absent")
        assert r.status_code == 200 and r.json()["evictable"] is True
        assert r.json()["level"] == "stored"
        r = await put_level(edge, "tiny-gpt2")
        assert r.status_code == 200, r.text
        assert not (fetch_dir / "tiny-sd").exists()
        assert (fetch_dir / "tiny-llama").exists() and (fetch_dir / "tiny-gpt2").exists()
        assert not list(fetch_dir.glob(".trash-*"))
        models = {m["id"] for m in (await edge.get("/v1/models")).json()["data"]}
        assert models == {"tiny-llama", "tiny-gpt2"}
        metrics = (await edge.get("/metrics")).text
        assert 'genedge_disk_evictions_total{model="tiny-sd"} 1.0' in metrics


async def test_absent_cancels_a_fetch_and_keeps_its_partials(store: Path, tmp_path: Path) -> None:
    async with cloud_and_edge(store, tmp_path, fetch_max_bps=20_000) as (_, edge):
        r = await edge.put("/v1/models/tiny-sd/level", json={"level": "stored"})
        assert r.status_code == 202 and r.json()["state"] == "fetching"
        for _ in range(200):
            st = (await edge.get("/v1/models/tiny-sd/status")).json()
            if st["fetch"] and st["fetch"]["bytes_done"] > 0:
                break
            await asyncio.sleep(0.02)
        assert st["fetch"]["rate_Bps"] < 200_000  # the cap holds (loopback is GB/s)
        assert "MB/s" in st["progress_detail"]
        r = await edge.put("/v1/models/tiny-sd/level", json={"level": "absent"})
        assert r.status_code == 200 and r.json()["target_level"] == "absent"
        assert (await edge.get("/v1/models/tiny-sd/status")).status_code == 404
        stage = tmp_path / "edge-store" / ".fetched" / STAGING_DIR / "tiny-sd"
        assert any(p.is_file() for p in stage.rglob("*"))


# ----------------------------------------------------------------------------- eviction order


class FakeFetcher:
    """A repository of fixed-size models; `fetch` asks for `need` bytes of room."""

    source = "http://repo.test"
    measured_Bps = None

    def __init__(self, need: int) -> None:
        self.need = need
        self.removed: list[str] = []

    async def describe(self, model_id: str) -> ModelManifest | None:
        return manifest(model_id, 100).model_copy(update={"origin": ModelOrigin.FETCHED})

    async def fetch(self, model_id, progress, make_room):  # type: ignore[no-untyped-def]
        progress(FetchProgress(source=self.source, bytes_total=100, bytes_done=100, started_at=0))
        freed = await make_room(self.need, model_id)
        if freed < self.need:
            from edge_agent.errors import FetchFailed

            raise FetchFailed(f"needs {self.need}, freed {freed}")
        return await self.describe(model_id)

    def removable(self, m: ModelManifest) -> bool:
        return True

    async def remove(self, m: ModelManifest) -> None:
        self.removed.append(m.id)


def fetched(model_id: str) -> ModelManifest:
    return manifest(model_id, 100).model_copy(update={"origin": ModelOrigin.FETCHED})


def manager_with(fetcher: FakeFetcher, *, evict_user_models: bool = False) -> ModelManager:
    models = [fetched(i) for i in ("old", "older", "never", "placed", "pinned", "busy")]
    models.append(manifest("user", 100))
    mgr = ModelManager(
        models,
        fake_loader(),
        device_budget_bytes=10**9,
        cache_budget_bytes=10**9,
        fetcher=fetcher,  # type: ignore[arg-type]
        evict_user_models=evict_user_models,
    )
    e = mgr._entries
    e["old"].last_used, e["older"].last_used = 30.0, 20.0
    e["user"].last_used = 1.0
    e["placed"].placed = True
    e["busy"].last_used, e["busy"].in_flight = 5.0, 1
    mgr.set_pins({"pinned": "stored"})
    return mgr


async def test_eviction_order_lru_fetched_only() -> None:
    fake = FakeFetcher(need=250)
    mgr = manager_with(fake)
    evictable = {s.id for s in mgr.statuses() if s.evictable}
    assert evictable == {"old", "older", "never"}
    assert mgr.status("pinned").pinned_level == "stored"
    st = await mgr.set_level("new", Level.STORED, wait=True)
    assert st.state == ModelState.READY and st.level == Level.STORED
    assert fake.removed == ["never", "older", "old"]  # least recently used first
    assert "user" in mgr.model_ids() and "placed" in mgr.model_ids()


async def test_eviction_stops_when_enough_and_refuses_when_never_enough() -> None:
    fake = FakeFetcher(need=150)
    mgr = manager_with(fake)
    await mgr.set_level("new", Level.STORED, wait=True)
    assert fake.removed == ["never", "older"]

    fake = FakeFetcher(need=350)  # more than all evictable models: delete nothing
    mgr = manager_with(fake)
    st = await mgr.set_level("new", Level.STORED, wait=True)
    assert st.state == ModelState.FAILED and st.level == Level.ABSENT
    assert fake.removed == []


async def test_user_models_evicted_only_with_the_setting() -> None:
    fake = FakeFetcher(need=350)
    mgr = manager_with(fake, evict_user_models=True)
    await mgr.set_level("new", Level.STORED, wait=True)
    assert fake.removed == ["never", "user", "older", "old"]


async def test_pins_from_several_sources_merge() -> None:
    mgr = manager_with(FakeFetcher(need=0))
    mgr.set_pins({"old": "stored", "never": "cached"}, source="settings")
    mgr.set_pins({"old": "resident"})  # the orchestrator's, complete for its source
    assert mgr.status("old").pinned_level == "resident"
    assert mgr.status("never").pinned_level == "cached"
    assert mgr.status("pinned").pinned_level is None  # no source pins it any more
    assert not mgr.status("old").evictable and mgr.status("pinned").evictable
    mgr.set_pins({})
    assert mgr.status("old").pinned_level == "stored"


async def test_unknown_model_without_repository_is_404() -> None:
    mgr = ModelManager([], fake_loader(), device_budget_bytes=10**9, cache_budget_bytes=10**9)
    with pytest.raises(UnknownModel, match="not on this host"):
        await mgr.set_level("x", Level.STORED)


async def test_a_slashed_id_is_fetched_into_an_encoded_folder_and_found_again(
    store: Path, tmp_path: Path
) -> None:
    """A hub repo id `org/name` (here from the cloud agent's Hugging Face cache) cannot be a
    folder name: the fetch directory holds `org%2Fname` with a `genedge.json` naming the id,
    and a restart serves it as `org/name` again."""
    from tests.test_hub_cache import put_in_hub_cache

    hub = tmp_path / "hub"
    put_in_hub_cache(hub, "org/tiny-gpt2", store / "tiny-gpt2")
    empty = tmp_path / "cloud-store"
    empty.mkdir()
    async with cloud_and_edge(empty, tmp_path, cloud_kw={"hf_cache": [hub]}) as (_, edge):
        r = await put_level(edge, "org/tiny-gpt2")
        assert r.status_code == 200, r.text
        assert r.json()["id"] == "org/tiny-gpt2" and r.json()["origin"] == "fetched"
    fetched_dir = tmp_path / "edge-store" / ".fetched"
    names = [p.name for p in fetched_dir.iterdir() if not p.name.startswith(".")]
    assert names == ["org%2Ftiny-gpt2"]
    folder = fetched_dir / "org%2Ftiny-gpt2"
    assert json.loads((folder / "genedge.json").read_text()) == {"id": "org/tiny-gpt2"}
    settings = agent_settings(tmp_path / "edge-store", tmp_path / "edge2")
    async with running_agent(settings, loader=fake_loader()) as again:
        st = (await again.get("/v1/models/org/tiny-gpt2/status")).json()
        assert st["id"] == "org/tiny-gpt2" and st["origin"] == "fetched"


def test_eviction_never_picks_a_hub_cache_snapshot(tmp_path: Path) -> None:
    fetcher = Fetcher(httpx.AsyncClient(), "http://repo.test", tmp_path)
    snap = tmp_path / "hub" / "models--org--name" / "snapshots" / "abc123"
    assert not fetcher.removable(manifest("org/name", 100).model_copy(update={"path": str(snap)}))
    plain = tmp_path / ".fetched" / "org%2Fname"
    assert fetcher.removable(manifest("org/name", 100).model_copy(update={"path": str(plain)}))


async def test_two_fetches_do_not_count_the_same_free_bytes(store: Path, tmp_path: Path) -> None:
    """A fetch under way has promised the disk the bytes it has still to write: a second
    fetch that would fit only in those bytes is refused before any byte, saying so."""
    gpt2 = sum(p.stat().st_size for p in folder_files(store / "tiny-gpt2"))
    llama = sum(p.stat().st_size for p in folder_files(store / "tiny-llama"))
    async with cloud_and_edge(store, tmp_path, fetch_max_bps=gpt2 / 3) as (_, edge):
        fetcher: Fetcher = edge.app.state.agent.manager.fetcher  # type: ignore[attr-defined]
        fetcher.reserve_bytes = 0
        # room for either model, never both (the disk seen does not shrink as bytes land)
        fetcher.disk_free = lambda path: max(gpt2, llama) + min(gpt2, llama) // 2
        first = asyncio.create_task(put_level(edge, "tiny-gpt2"))
        await poll_status(edge, "tiny-gpt2", lambda st: st.get("fetch") is not None, timeout=10)
        r = await put_level(edge, "tiny-llama")
        assert r.status_code == 503, r.text
        reason = r.json()["failed_reason"]
        assert "promised to fetches under way" in reason and "nothing was written" in reason
        assert (await first).status_code == 200  # the first one is unharmed
        r = await put_level(edge, "tiny-llama")  # and once it is done, the second fits
        assert r.status_code == 200, r.text
