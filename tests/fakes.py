"""Hand-written fakes for unit tests of the layers above the torch adapters.

`FakeDevice` is a GPU with settable capacity that counts allocated bytes; `FakeLoader` loads
`FakeModel`s onto it, optionally slowly, optionally failing, and can block a generation on a
threading.Event so a test can act while a request is in flight.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from edge_agent.core.batching import BatchLimits
from edge_agent.core.ports import ImageParams, LoadReport, TextParams, TextResult
from genedge.contract import ChatMessage, ModelFormat, ModelKind, ModelManifest, ModelProfile


class FakeOOM(RuntimeError):
    pass


@dataclass
class FakeDevice:
    capacity: int
    allocated: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def alloc(self, n: int) -> None:
        with self.lock:
            if self.allocated + n > self.capacity:
                raise FakeOOM(
                    f"out of memory: {n} bytes requested, {self.capacity - self.allocated} free"
                )
            self.allocated += n

    def free(self, n: int) -> None:
        with self.lock:
            self.allocated -= n


class FakeModel:
    def __init__(
        self, model_id: str, nbytes: int, device: FakeDevice, gate: threading.Event | None
    ):
        self.model_id = model_id
        self.nbytes = nbytes
        self.device = device
        self.gate = gate
        self.closed = False
        self.started = threading.Event()

    def memory_bytes(self) -> int:
        return 0 if self.closed else self.nbytes

    def generate_text(self, messages, prompt, params: TextParams, on_token=None, should_stop=None):
        assert not self.closed, "generating on a closed model"
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        assert not self.closed, "model was closed while a request was running"
        words = [f"w{i} " for i in range(params.max_tokens)]
        for w in words:
            if should_stop and should_stop():
                break
            if on_token:
                on_token(w)
        return TextResult("".join(words), 3, len(words), "length")

    def generate_image(self, prompt: str, params: ImageParams, should_stop=None) -> list[bytes]:
        return [b"\x89PNG fake"] * params.n

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.device.free(self.nbytes)


class FakeHostCopy:
    def __init__(self, model_id: str, nbytes: int):
        self.model_id = model_id
        self.nbytes = nbytes
        self.released = False

    def release(self) -> None:
        self.released = True


class FakeLoader:
    device = "fake"

    def __init__(
        self, device: FakeDevice, sizes: dict[str, int] | None = None, load_s: float = 0.0
    ):
        self.dev = device
        self.sizes = sizes if sizes is not None else {}
        self.load_s = load_s
        self.fail: dict[str, str] = {}
        self.gates: dict[str, threading.Event] = {}
        self.loads: list[tuple[str, str]] = []
        self.models: list[FakeModel] = []
        self.batch_caches: dict[str, int] = {}  # model id -> its batch's KV cache bytes

    def size(self, manifest: ModelManifest) -> int:
        return self.sizes.get(manifest.id, manifest.storage_bytes)

    def batch_cache_bytes(self, manifest: ModelManifest, limits: BatchLimits) -> int:
        return self.batch_caches.get(manifest.id, 0) if limits.text else 0

    def read_to_host(self, manifest: ModelManifest) -> FakeHostCopy:
        return FakeHostCopy(manifest.id, self.size(manifest))

    def load(self, manifest: ModelManifest, source):
        tier = "ram" if source is not None else "disk"
        time.sleep(self.load_s)
        if manifest.id in self.fail:
            raise RuntimeError(self.fail[manifest.id])
        self.dev.alloc(self.size(manifest))
        m = FakeModel(manifest.id, self.size(manifest), self.dev, self.gates.get(manifest.id))
        self.models.append(m)
        self.loads.append((manifest.id, tier))
        return m, LoadReport(loader="fake", tier=tier, seconds=self.load_s + 1e-6)


def manifest(model_id: str, nbytes: int, kind: ModelKind = ModelKind.TEXT) -> ModelManifest:
    return ModelManifest(
        id=model_id,
        kind=kind,
        format=ModelFormat.TRANSFORMERS if kind == ModelKind.TEXT else ModelFormat.DIFFUSERS,
        path=f"/nonexistent/{model_id}",
        architecture="Fake",
        storage_bytes=nbytes,
    )


def msgs(text: str = "hi") -> list[ChatMessage]:
    return [ChatMessage(role="user", content=text)]


def fake_profile(
    model_id: str,
    kind: ModelKind = ModelKind.TEXT,
    *,
    generation_s: float = 1.0,
    generation_what: str = "~96-word chat prompt, 16 new tokens, greedy, batch 1",
) -> ModelProfile:
    """A profile as if measured on this host, with a chosen default generation's time."""
    return ModelProfile(
        model_id=model_id,
        kind=kind,
        architecture="Fake",
        host_fingerprint="fake-host",
        file_digest="fake-digest",
        device="fake",
        dtype="float32",
        params=1,
        storage_bytes=1,
        resident_bytes=1,
        peak_bytes=1,
        memory_method="tensor_bytes+rss_growth",
        load_cold_s=0.01,
        load_warm_s=0.01,
        load_ram_s=0.01,
        generation_s=generation_s,
        generation_what=generation_what,
    )


class FakeProfiler:
    """A profiler (runtime.ProfilerLike) that holds each run at `gate` until a test opens it,
    so a test can fill the profile queue; counts runs started in `started`."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = 0
        self._lock = threading.Lock()

    def profile(self, manifest: ModelManifest, progress=None) -> ModelProfile:
        with self._lock:
            self.started += 1
        assert self.gate.wait(10), "test gate never opened"
        return fake_profile(manifest.id, manifest.kind)
