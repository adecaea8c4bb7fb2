"""The Kubernetes manifests (deploy/k8s): every overlay renders with `kubectl kustomize`,
every object passes `kubernetes-validate --strict`, and what the manifests say agrees with
the code: every environment variable is a field of its service's settings, ports and probes
are the services' own, images are those docker/ builds, secrets hold what
`genedge credentials` writes, pods run as non-root with limits, and the network policies let
only the orchestrator and the gateways reach the agents."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
KUBE_VERSION = "1.30"  # oldest Kubernetes the manifests target (autoscaling/v2, policy/v1)
CRD_KINDS = {"ServiceMonitor"}  # not in the core schemas: checked for shape only

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None,
    reason="kubectl is not installed: it renders the kustomize overlays (kubectl ships kustomize)",
)


def render(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def overlays(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    # and the gpu overlay with the optional ServiceMonitor component, as a user adds it
    monitored = tmp_path_factory.mktemp("monitored")
    rel = Path("..") / Path(*([".."] * (len(monitored.parts) - 1)))
    (monitored / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {rel}{K8S / 'overlays' / 'gpu'}\n"
        f"components:\n  - {rel}{K8S / 'components' / 'service-monitor'}\n"
    )
    return {
        "gpu": render(K8S / "overlays" / "gpu"),
        "cpu": render(K8S / "overlays" / "cpu"),
        "gpu+service-monitor": render(monitored),
    }


def kinds(objs: list[dict[str, Any]]) -> set[str]:
    return {f"{o['kind']}/{o['metadata']['name']}" for o in objs}


def pods(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (o["metadata"]["name"], o["spec"]["template"]["spec"])
        for o in objs
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet")
    ]


def test_every_overlay_renders_the_whole_system(overlays: dict[str, list[dict[str, Any]]]) -> None:
    common = {
        "Namespace/genedge",
        "StatefulSet/orchestrator",
        "Service/orchestrator",
        "Deployment/gateway",
        "Service/gateway",
        "HorizontalPodAutoscaler/gateway",
        "PodDisruptionBudget/gateway",
        "DaemonSet/edge-agent",
        "Service/edge-agent",
        "NetworkPolicy/default-deny-ingress",
        "NetworkPolicy/agents",
        "NetworkPolicy/orchestrator",
        "NetworkPolicy/gateway",
    }
    assert kinds(overlays["gpu"]) == common
    assert kinds(overlays["cpu"]) == common | {
        "Deployment/cloud-agent",
        "PersistentVolumeClaim/cloud-agent-models",
        "Service/cloud-agent",
        "NetworkPolicy/model-repository",
    }
    assert kinds(overlays["gpu+service-monitor"]) == common | {"ServiceMonitor/genedge"}
    for objs in overlays.values():
        assert all(
            o["metadata"].get("namespace") == "genedge" for o in objs if o["kind"] != "Namespace"
        )


def test_every_object_passes_strict_schema_validation(
    overlays: dict[str, list[dict[str, Any]]],
) -> None:
    for name, objs in overlays.items():
        for o in objs:
            if o["kind"] in CRD_KINDS:
                assert o["apiVersion"] == "monitoring.coreos.com/v1"
                assert o["spec"]["endpoints"][0]["port"] == "http"
                continue
            try:
                kubernetes_validate.validate(o, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{name}: {o['kind']}/{o['metadata']['name']}: {exc}") from exc


def _settings_of(command: list[str]) -> tuple[str, type]:
    from cloud_gateway.settings import GatewaySettings
    from edge_agent.settings import AgentSettings
    from orchestrator.settings import OrchestratorSettings

    service = command[1]
    return {
        "agent": ("EDGE_", AgentSettings),
        "orchestrator": ("ORCH_", OrchestratorSettings),
        "gateway": ("GW_", GatewaySettings),
    }[service]


def test_every_environment_variable_is_a_setting_and_ports_match(
    overlays: dict[str, list[dict[str, Any]]],
) -> None:
    for objs in overlays.values():
        for name, spec in pods(objs):
            for c in spec["containers"]:
                prefix, settings = _settings_of(c["command"])
                fields = settings.model_fields
                env = c.get("env", [])
                defined: list[str] = []
                for e in env:
                    var = e["name"]
                    # $(VAR) expands only variables defined earlier in the list
                    for ref in re.findall(r"\$\((\w+)\)", str(e.get("value", ""))):
                        assert ref in defined, f"{name}: {var} uses $({ref}) before it is set"
                    defined.append(var)
                    if var.startswith(prefix):
                        assert var[len(prefix) :].lower() in fields, f"{name}: {var} is no setting"
                    else:  # a helper: must be used by a setting
                        assert any(f"$({var})" in str(x.get("value", "")) for x in env), var
                values = {e["name"]: e.get("value") for e in env}
                port = c["ports"][0]["containerPort"]
                assert port == fields["port"].default, f"{name}: port {port}"
                assert values.get(f"{prefix}PORT") == str(port)
                assert values.get(f"{prefix}HOST") == "0.0.0.0"
                for probe in ("readinessProbe", "livenessProbe"):
                    assert c[probe]["httpGet"]["port"] == "http"
                assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
                assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_probe_paths_and_ports_are_the_services_own() -> None:
    from cloud_gateway.api.routes import router as gateway
    from edge_agent.api.routes import router as agent
    from orchestrator.api.routes import router as orchestrator

    for router in (agent, orchestrator, gateway):
        paths = {getattr(r, "path", None) for r in router.routes}
        assert {"/healthz", "/readyz", "/metrics"} <= paths
    dockerfiles = (REPO / "docker" / "Dockerfile.control").read_text()
    assert re.search(r"^EXPOSE 8000 8080$", dockerfiles, re.M)
    for name in ("Dockerfile.agent", "Dockerfile.agent-cpu"):
        assert re.search(r"^EXPOSE 8100$", (REPO / "docker" / name).read_text(), re.M)


def test_images_are_the_ones_docker_builds(overlays: dict[str, list[dict[str, Any]]]) -> None:
    compose = "".join(
        (REPO / "docker" / f).read_text() for f in ("compose.yaml", "compose.cpu.yaml")
    )
    built = set(re.findall(r"image: (genedge-[a-z-]+):", compose))
    assert built == {"genedge-control", "genedge-agent", "genedge-agent-cpu"}
    for name, objs in overlays.items():
        for pod_name, spec in pods(objs):
            for c in spec["containers"] + spec.get("initContainers", []):
                image, _, tag = c["image"].partition(":")
                assert image in built and tag == "latest", (name, pod_name, c["image"])
                if name == "cpu":
                    assert image != "genedge-agent", "the cpu overlay uses the CPU image"


def test_secrets_hold_what_genedge_credentials_writes(
    overlays: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    from launcher.cli import main

    assert main(["credentials", str(tmp_path / "creds")]) == 0
    written = {p.name for p in (tmp_path / "creds").iterdir()}
    need = {
        "orchestrator": {"agent_token", "gateway_token", "operator_token"},
        "gateway": {"gateway_token", "agent_token", "gateway_key.sha256"},
        "edge-agent": {"agent_token"},
        "cloud-agent": {"agent_token"},
    }
    for objs in overlays.values():
        for name, spec in pods(objs):
            (vol,) = [v for v in spec["volumes"] if "secret" in v]
            assert vol["secret"]["secretName"] == "genedge-credentials"
            keys = {i["key"] for i in vol["secret"]["items"]}
            assert keys == need[name] and keys <= written, name  # least privilege


def test_pods_run_as_non_root_with_limits(overlays: dict[str, list[dict[str, Any]]]) -> None:
    for objs in overlays.values():
        for name, spec in pods(objs):
            assert spec["securityContext"]["runAsNonRoot"] is True, name
            for c in spec["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == [
                    "ALL"
                ]
                assert {"cpu", "memory"} <= set(c["resources"]["limits"]), name
            for c in spec.get("initContainers", []):  # only the chown of the node folders
                assert c["securityContext"]["capabilities"]["add"] == ["CHOWN"]
                assert c["command"][-1].startswith("chown 10001:10001 ")


def test_agents_get_the_gpu_and_a_ram_tier_within_their_limit(
    overlays: dict[str, list[dict[str, Any]]],
) -> None:
    units = {"Gi": 2**30, "Mi": 2**20}

    def agent(objs: list[dict[str, Any]]) -> dict[str, Any]:
        (spec,) = [s for n, s in pods(objs) if n == "edge-agent"]
        return spec

    gpu, cpu = agent(overlays["gpu"]), agent(overlays["cpu"])
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert (
        "nodeSelector" not in cpu
        and "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    )
    for spec, device in ((gpu, "cuda:0"), (cpu, "cpu")):
        c = spec["containers"][0]
        env = {e["name"]: e for e in c["env"]}
        assert env["EDGE_DEVICE"]["value"] == device
        assert env["EDGE_HOST_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        assert env["EDGE_ADVERTISE_URL"]["value"] == "http://$(POD_IP):8100"
        limit = c["resources"]["limits"]["memory"]
        limit_bytes = int(limit[:-2]) * units[limit[-2:]]
        # the RAM tier leaves a third of the limit to the process and a model being loaded
        assert int(env["EDGE_CACHE_BUDGET_BYTES"]["value"]) <= limit_bytes * 2 // 3


def test_network_policies_let_only_the_control_plane_reach_agents(
    overlays: dict[str, list[dict[str, Any]]],
) -> None:
    policies = {
        o["metadata"]["name"]: o["spec"] for o in overlays["gpu"] if o["kind"] == "NetworkPolicy"
    }
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}

    def sources(spec: dict[str, Any]) -> set[str]:
        out = set()
        for rule in spec["ingress"]:
            for peer in rule.get("from", []):
                for expr in peer.get("podSelector", {}).get("matchExpressions", []):
                    out |= set(expr["values"])
                out |= {f"ns:{k}" for k in peer.get("namespaceSelector", {}).get("matchLabels", {})}
        return out

    assert sources(policies["agents"]) == {"orchestrator", "gateway", "ns:genedge.io/monitoring"}
    assert sources(policies["orchestrator"]) == {
        "edge-agent",
        "cloud-agent",
        "gateway",
        "ns:genedge.io/operator",
        "ns:genedge.io/monitoring",
    }
    assert [p["port"] for r in policies["agents"]["ingress"] for p in r["ports"]] == [8100]


def test_with_a_cloud_agent_edge_agents_fetch_from_it_and_may_reach_it(
    overlays: dict[str, list[dict[str, Any]]],
) -> None:
    objs = {f"{o['kind']}/{o['metadata']['name']}": o for o in overlays["cpu"]}
    env = {
        e["name"]: e.get("value")
        for e in objs["DaemonSet/edge-agent"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    service = objs["Service/cloud-agent"]["spec"]
    assert env["EDGE_REPOSITORY_URL"] == f"http://cloud-agent:{service['ports'][0]['port']}"
    assert service["selector"] == {"app.kubernetes.io/name": "cloud-agent"}
    policy = objs["NetworkPolicy/model-repository"]["spec"]
    assert policy["podSelector"]["matchLabels"] == service["selector"]
    (rule,) = policy["ingress"]
    assert rule["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "edge-agent"}}}
    ]
    assert [p["port"] for p in rule["ports"]] == [8100]
    gpu_env = {
        e["name"]
        for o in overlays["gpu"]
        if o["kind"] == "DaemonSet"
        for e in o["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert "EDGE_REPOSITORY_URL" not in gpu_env  # no cloud agent, no repository
