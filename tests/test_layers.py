"""The import rules of DESIGN.md ("Conventions" 4), checked by walking every module's imports.

- `genedge/` (the contract, the HTTP error mapping, credentials) imports no service: it is the
  ground floor every service stands on.
- A service (`orchestrator`, `cloud_gateway`, `edge_agent`) imports no other service, and none
  imports `launcher` (the command line and supervisor above them), `sim` or `bench`.
- A service's `core/` imports no web framework, HTTP client, torch stack or NVML, and none of
  its own service's `api/` or `adapters/`.
- torch, diffusers and transformers are imported only in `edge_agent/adapters/` (and above the
  services: `launcher`, `bench`, tests); the orchestrator and the gateway load none of them,
  not even transitively.
- `sim/` (research tooling) uses the orchestrator's decision core only.

Every import counts, including those inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("orchestrator", "cloud_gateway", "edge_agent")
ABOVE_SERVICES = ("launcher", "sim", "bench", "tests")
TORCH_STACK = ("torch", "diffusers", "transformers", "accelerate", "safetensors.torch")
FRAMEWORKS = ("fastapi", "starlette", "uvicorn", "httpx", "aiohttp", "pynvml")


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every absolute module name `path` imports (`from a.b import c` counts as `a.b`)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _is_under(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


def _violations(package: str, forbidden: tuple[str, ...], subdir: str = "") -> list[str]:
    out = []
    for path in _modules(package + ("/" + subdir if subdir else "")):
        for name in sorted(_imports(path)):
            if _is_under(name, forbidden):
                out.append(f"{path.relative_to(ROOT)} imports {name}")
    return out


def test_the_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("import os\n\ndef f():\n    from torch import nn\n    import cloud_gateway.app")
    assert _imports(src) == {"os", "torch", "cloud_gateway.app"}


def test_the_ground_floor_imports_no_service() -> None:
    assert _violations("genedge", SERVICES + ABOVE_SERVICES) == []


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service_nor_anything_above_it(service: str) -> None:
    others = tuple(s for s in SERVICES if s != service)
    assert _violations(service, others + ABOVE_SERVICES) == []


@pytest.mark.parametrize("service", SERVICES)
def test_a_core_imports_no_framework_no_torch_and_no_adapters(service: str) -> None:
    own = (f"{service}.api", f"{service}.adapters", f"{service}.app")
    assert _violations(service, FRAMEWORKS + TORCH_STACK + own, "core") == []


def test_torch_stack_only_in_the_agents_adapters() -> None:
    found = [
        v
        for package in ("genedge", *SERVICES, "sim")
        for v in _violations(package, TORCH_STACK)
        if not v.startswith("edge_agent/adapters/")
    ]
    assert found == []


def test_research_tooling_uses_only_the_decision_core() -> None:
    not_core = ("orchestrator.api", "orchestrator.adapters", "orchestrator.service")
    assert _violations("sim", SERVICES[1:] + not_core + FRAMEWORKS + ("launcher",)) == []


def test_orchestrator_and_gateway_load_no_torch_even_transitively() -> None:
    code = (
        "import sys, orchestrator.app, cloud_gateway.app\n"
        f"loaded = sorted(m for m in {TORCH_STACK!r} if m in sys.modules)\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
