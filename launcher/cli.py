"""`genedge`: the one command-line entry point.

    genedge agent         run an edge agent over a model store
    genedge orchestrator  run the orchestrator (placement decisions over REST)
    genedge gateway       run the cloud gateway (the user-facing OpenAI-style API)
    genedge profile  measure model folders on this host and print/write their profiles
    genedge models   build the demo model store (random-weight real architectures)
    genedge store    list what an agent would serve from its store roots, and why not
    genedge credentials  create the fleet's tokens in a folder (for docker compose)
    genedge up       the main job: the whole system on the demo models, with real requests

Heavy imports (torch, diffusers, transformers) happen inside the subcommands that need them,
so the control-plane commands stay light.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

EXIT_FAILED = 1
EXIT_REGISTRY_DAMAGED = 4
"""Distinct from a crash (1) and from uvicorn's failed startup (3): restore or move the file."""


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # One line per outgoing request (heartbeats, table polls) would drown the log.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _given(**options: Any) -> dict[str, Any]:
    """Command-line options that were given (the rest come from the environment)."""
    return {k: v for k, v in options.items() if v is not None}


def cmd_agent(args: argparse.Namespace) -> int:
    import uvicorn

    from edge_agent.app import create_app
    from edge_agent.settings import AgentSettings
    from genedge.serving import uvicorn_options

    overrides = _given(
        store_dir=args.store,
        profiles_dir=args.profiles_dir,
        host=args.host,
        port=args.port,
        device=args.device,
        host_id=args.host_id,
        hf_cache=args.hf_cache,
    )
    if args.no_profile:
        overrides["profile_on_start"] = False
    settings = AgentSettings(**overrides)
    _setup_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
        **uvicorn_options(settings),
    )
    return 0


def cmd_orchestrator(args: argparse.Namespace) -> int:
    import uvicorn

    from genedge.serving import uvicorn_options
    from orchestrator.adapters.registry import Registry, RegistryDamaged
    from orchestrator.app import create_app
    from orchestrator.settings import OrchestratorSettings

    settings = OrchestratorSettings(**_given(db_path=args.db, host=args.host, port=args.port))
    _setup_logging(settings.log_level)
    try:  # damage stops the start with one line, not a traceback from the app's startup
        Registry(settings.db_path).close()
    except RegistryDamaged as exc:
        print(f"genedge orchestrator: {exc}", file=sys.stderr)
        return EXIT_REGISTRY_DAMAGED
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        **uvicorn_options(settings),
    )
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    import uvicorn

    from cloud_gateway.app import create_app
    from cloud_gateway.settings import GatewaySettings
    from genedge.serving import uvicorn_options

    overrides = _given(
        host=args.host, port=args.port, orchestrator_url=args.orchestrator, cloud_url=args.cloud
    )
    settings = GatewaySettings(**overrides)
    _setup_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # one line per request costs more than the routing itself
        **uvicorn_options(settings),
    )
    return 0


def _fmt_bytes(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.2f} MB"


def cmd_profile(args: argparse.Namespace) -> int:
    _setup_logging("warning" if args.quiet else "info")
    from edge_agent.adapters import host as hostmod
    from edge_agent.adapters.device import resolve_device
    from edge_agent.adapters.profile_store import ProfileStore
    from edge_agent.adapters.profiler import Profiler
    from edge_agent.adapters.store import inspect_folder
    from edge_agent.adapters.store_roots import scan_root
    from edge_agent.adapters.torch_models import TorchModelLoader
    from edge_agent.errors import ModelFolderError

    path = Path(args.path).expanduser()
    if not path.is_dir():
        print(f"genedge profile: {path} is not a directory", file=sys.stderr)
        return 2
    if (path / "model_index.json").exists() or (path / "config.json").exists():
        try:
            manifests = [inspect_folder(path)]
        except ModelFolderError as exc:
            print(f"genedge profile: {path}: {exc.message}", file=sys.stderr)
            return 2
    else:
        manifests, bad = scan_root(_root_at(path))
        for b in bad:
            print(f"skipping {b.path}: {b.reason}", file=sys.stderr)
        if not manifests:
            print(f"genedge profile: no model folders under {path}", file=sys.stderr)
            return 2
    device = resolve_device(args.device)
    nvml = hostmod.Nvml()
    gpu = nvml.gpu(int(device.split(":")[1]) if ":" in device else 0) if "cuda" in device else None
    fingerprint = hostmod.host_fingerprint(device, gpu)
    profiler = Profiler(
        TorchModelLoader(device, dtype=args.dtype),
        fingerprint=fingerprint,
        description=hostmod.host_description(device, gpu),
        versions=hostmod.library_versions(),
        text_tokens=args.text_tokens,
        nvml=nvml,
    )
    store = ProfileStore(Path(args.profiles_dir), fingerprint) if args.profiles_dir else None
    profiles = []
    for m in manifests:
        print(
            f"profiling {m.id} ({m.architecture}, {_fmt_bytes(m.storage_bytes)}) on {device} ...",
            file=sys.stderr,
        )
        p = profiler.profile(m)
        profiles.append(p)
        if store is not None:
            store.put(p)
    header = f"{'model':<22}{'kind':<6}{'params':>12}{'disk':>13}{'resident':>13}{'peak':>13}"
    header += f"{'cold s':>9}{'warm s':>9}{'ram s':>9}{'lib cold':>10}{'lib warm':>10}{'gen s':>9}"
    print(f"host: {profiler.description} (fingerprint {fingerprint})")
    print(header)
    for p in profiles:
        lib = p.loaders.get("library")
        print(
            f"{p.model_id:<22}{p.kind.value:<6}{p.params:>12,}{_fmt_bytes(p.storage_bytes):>13}"
            f"{_fmt_bytes(p.resident_bytes):>13}{_fmt_bytes(p.peak_bytes):>13}"
            f"{p.load_cold_s:>9.3f}{p.load_warm_s:>9.3f}{p.load_ram_s:>9.3f}"
            f"{(lib.cold_s if lib and lib.cold_s else float('nan')):>10.3f}"
            f"{(lib.warm_s if lib and lib.warm_s else float('nan')):>10.3f}"
            f"{p.generation_s:>9.3f}"
        )
        print(f"{'':<22}generation: {p.generation_what}; memory by {p.memory_method}")
    if args.json:
        doc = [p.model_dump(mode="json") for p in profiles]
        Path(args.json).write_text(json.dumps(doc[0] if len(doc) == 1 else doc, indent=1))
        print(f"wrote {args.json}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    _setup_logging("info")
    from edge_agent.adapters.demo_store import build_demo_store

    built = build_demo_store(Path(args.dest), scale=args.scale)
    for p in built:
        print(p)
    return 0


def _root_at(path: Path, revisions: dict[str, str] | None = None) -> Any:
    """A store root at `path`: a Hugging Face cache when it holds `models--*` folders, else a
    folder of model folders."""
    from edge_agent.adapters.hub_cache import is_hub_cache
    from edge_agent.adapters.store_roots import StoreRoot

    if is_hub_cache(path):
        return StoreRoot(path, "hf_cache", revisions or {})
    return StoreRoot(path)


def _revisions(items: list[str] | None) -> dict[str, str]:
    pins: dict[str, str] = {}
    for item in items or []:
        repo, sep, rev = item.partition("=")
        if not sep or not repo or not rev:
            raise ValueError(f"--revision {item!r} is not REPO=REVISION (e.g. org/name=main)")
        pins[repo] = rev
    return pins


def cmd_store(args: argparse.Namespace) -> int:
    """What an agent would serve, read exactly as the agent reads it (no model is loaded):
    a check before pointing an agent at a Hugging Face cache."""
    from edge_agent.adapters.store_roots import StoreRoot, scan_roots

    given = [Path(p).expanduser() for p in args.paths]
    caches = [Path(p).expanduser() for p in args.hf_cache or []]
    if given or caches:
        pins = _revisions(args.revision)
        roots = [_root_at(p, pins) for p in given]
        roots += [StoreRoot(p, "hf_cache", pins) for p in caches]
    else:  # the agent's own settings (EDGE_STORE_DIR, EDGE_EXTRA_STORE_DIRS, EDGE_HF_CACHE...)
        from edge_agent.app import store_roots
        from edge_agent.settings import AgentSettings

        settings = AgentSettings()
        if args.revision:
            settings.hf_revisions = _revisions(args.revision)
        # The agent creates a missing store folder: nothing to report about it here.
        roots = [r for r in store_roots(settings) if r.path.exists() or r.layout != "folders"]
    manifests, bad = scan_roots(roots)
    if args.json:
        doc = {
            "roots": [{"path": str(r.path), "layout": r.layout} for r in roots],
            "models": [m.model_dump(mode="json") for m in manifests],
            "bad_folders": [b.model_dump(mode="json") for b in bad],
        }
        print(json.dumps(doc, indent=1))
    else:
        for r in roots:
            layout = "Hugging Face cache" if r.layout == "hf_cache" else "folders"
            print(f"root {r.path} ({layout})")
        print(f"{'model':<36}{'kind':<7}{'architecture':<32}{'disk':>13}  path")
        for m in manifests:
            print(
                f"{m.id:<36}{m.kind.value:<7}{m.architecture:<32}"
                f"{_fmt_bytes(m.storage_bytes):>13}  {m.path}"
            )
        if bad:
            print(f"not served ({len(bad)}):")
            for b in bad:
                print(f"  {b.path}: {b.reason}")
    if not manifests:
        print("genedge store: no servable model in these roots", file=sys.stderr)
        return 2
    return 0


def cmd_credentials(args: argparse.Namespace) -> int:
    """Make a folder hold every credential (docker compose runs this once into a volume)."""
    import os

    from genedge.auth import ensure_credentials

    given = {
        name: os.environ.get(f"GENEDGE_{name.upper()}", "")
        for name in ("agent_token", "gateway_token", "operator_token", "gateway_key")
    }
    ensure_credentials(Path(args.dir), given)
    print(f"credentials in {Path(args.dir) / 'credentials.env'} (mode 0600)")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from launcher.up import run

    _setup_logging("warning")
    return run(Path(args.state), once=args.once)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genedge", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--debug", action="store_true", help="show the traceback of a failure (default: one line)"
    )
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("agent", help="run an edge agent (settings: EDGE_* environment)")
    a.add_argument("--store", help="model store directory (EDGE_STORE_DIR)")
    a.add_argument("--profiles-dir", help="where measured profiles go (EDGE_PROFILES_DIR)")
    a.add_argument("--host", help="bind address (EDGE_HOST)")
    a.add_argument("--port", type=int, help="port (EDGE_PORT)")
    a.add_argument("--device", help="auto, cpu or cuda:N (EDGE_DEVICE)")
    a.add_argument("--host-id", help="this host's name in the fleet (EDGE_HOST_ID)")
    a.add_argument(
        "--hf-cache",
        action="append",
        metavar="DIR",
        help="also serve a Hugging Face hub cache, e.g. ~/.cache/huggingface/hub "
        "(repeatable; EDGE_HF_CACHE)",
    )
    a.add_argument("--no-profile", action="store_true", help="do not profile models at start")
    a.set_defaults(func=cmd_agent)

    o = sub.add_parser("orchestrator", help="run the orchestrator (settings: ORCH_* environment)")
    o.add_argument("--db", help="SQLite file (ORCH_DB_PATH)")
    o.add_argument("--host", help="bind address (ORCH_HOST)")
    o.add_argument("--port", type=int, help="port (ORCH_PORT)")
    o.set_defaults(func=cmd_orchestrator)

    g = sub.add_parser("gateway", help="run the cloud gateway (settings: GW_* environment)")
    g.add_argument("--orchestrator", help="orchestrator base URL (GW_ORCHESTRATOR_URL)")
    g.add_argument("--cloud", help="OpenAI-compatible cloud base URL (GW_CLOUD_URL)")
    g.add_argument("--host", help="bind address (GW_HOST)")
    g.add_argument("--port", type=int, help="port (GW_PORT)")
    g.set_defaults(func=cmd_gateway)

    pr = sub.add_parser("profile", help="measure a model folder (or every model in a store)")
    pr.add_argument("path")
    pr.add_argument("--json", help="write the profile(s) as JSON to this file")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=None)
    pr.add_argument(
        "--text-tokens", type=int, default=16, help="new tokens in the timed generation"
    )
    pr.add_argument("--profiles-dir", help="also store profiles here, by host fingerprint")
    pr.add_argument("--quiet", action="store_true")
    pr.set_defaults(func=cmd_profile)

    st = sub.add_parser(
        "store",
        help="list what an agent would serve from its store roots and why a folder is not "
        "served (no model is loaded)",
    )
    st.add_argument(
        "paths",
        nargs="*",
        help="folders of model folders or Hugging Face caches (told apart by their "
        "models--* folders); none: the agent's settings (EDGE_STORE_DIR, "
        "EDGE_EXTRA_STORE_DIRS, EDGE_HF_CACHE, EDGE_HF_REVISIONS)",
    )
    st.add_argument(
        "--hf-cache", action="append", metavar="DIR", help="a Hugging Face cache (repeatable)"
    )
    st.add_argument(
        "--revision",
        action="append",
        metavar="REPO=REV",
        help="serve this revision (ref or commit hash) of a cached repo (repeatable)",
    )
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    st.set_defaults(func=cmd_store)

    m = sub.add_parser("models", help="build the demo model store")
    m.add_argument("dest")
    m.add_argument("--scale", type=int, default=1, help="grow the tiny architectures")
    m.set_defaults(func=cmd_models)

    c = sub.add_parser(
        "credentials",
        help="create the fleet's tokens and the gateway key in a folder (kept if present; "
        "GENEDGE_AGENT_TOKEN etc. in the environment win)",
    )
    c.add_argument("dir")
    c.set_defaults(func=cmd_credentials)

    for name in ("up", "demo"):
        d = sub.add_parser(
            name,
            help="the whole system on this machine: orchestrator, gateway, two edge agents "
            "and a cloud agent on the demo models, with real requests"
            + (" (alias of up)" if name == "demo" else ""),
        )
        d.add_argument("--state", default=".genedge", help="where the store, state and logs live")
        d.add_argument("--once", action="store_true", help="exit after the requests")
        d.set_defaults(func=cmd_up)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line, never a traceback (unless --debug)
        if args.debug:
            raise
        print(f"genedge {args.command}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED


def _one_line(exc: Exception) -> str:
    """A failure's reason on one line: a settings error names its fields."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return "invalid settings: " + "; ".join(parts)
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
