"""deploy/: render every kustomization with real kubectl, validate every object
against the Kubernetes OpenAPI schemas (kubernetes-validate, strict), and check the
deployment's policies against the service's own code (CLI parser, settings,
routes, metrics registry). No cluster and no server needed."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
from packaging.version import Version
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from endorm_server.cli import build_parser, settings_from_args
from endorm_server.config import Settings
from endorm_server.http.metrics import Metrics
from endorm_server.http.routes.meta import open_router
from endorm_server.http.server import EXIT_ALLOWANCE_S, exit_bound_s
from tests.deploy.dockerfiles import dockerfile_user, parse_dockerfile
from tests.deploy.kube import (
    CRD_SCHEMAS,
    DOCKERFILES,
    GPU_OVERLAYS,
    KUSTOMIZATIONS,
    OVERLAYS,
    by_kind,
    container_port,
    crd_validator,
    identity,
    labels_match,
    one,
    pod_templates,
    project,
    quantity,
    render,
    renderers,
    require_renderer,
    server_container,
)
from tests.tools import tool_missing

SCHEMAS = Path(__file__).parent / "schemas"
# Kubernetes version to validate against: the newest kubernetes-validate ships.
MIN_K8S = Version("1.37")
GPU = "nvidia.com/gpu"
# Startup budget for loading a model (weights from the cache, warm-up) before the
# startup probe gives up and the pod restarts.
MIN_STARTUP_BUDGET_S = 600

overlays = pytest.mark.parametrize("overlay", list(OVERLAYS))
gpu_overlays = pytest.mark.parametrize("overlay", GPU_OVERLAYS)
kustomizations = pytest.mark.parametrize("name", list(KUSTOMIZATIONS))


# ---------------------------------------------------------------- helpers


def deployment(docs: list[dict]) -> dict:
    return one(docs, "Deployment")


def open_get_paths() -> set[str]:
    """GET routes served without an API key (probes carry none)."""
    return {route.path for route in open_router.routes if "GET" in route.methods}


def exported_metrics() -> dict[str, str]:
    """name -> type of every family /metrics exports from the service registry."""
    text = generate_latest(Metrics().registry).decode()
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def env_of(docs: list[dict], container: dict) -> dict[str, str]:
    """The container's literal environment: envFrom ConfigMaps, then env values."""
    configmaps = {cm["metadata"]["name"]: cm.get("data", {}) for cm in by_kind(docs, "ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            assert ref["name"] in configmaps or ref.get("optional"), f"envFrom ConfigMap {ref['name']} not rendered"
            env.update({source.get("prefix", "") + k: v for k, v in configmaps.get(ref["name"], {}).items()})
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "configMapKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = configmaps[ref["name"]][ref["key"]]
    return env


def effective_settings(docs: list[dict], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings the server would start with: the container's args through the real
    `endorm serve` parser, over its ENDORM_* environment, through the real Settings."""
    container = server_container(deployment(docs))
    args = container.get("args", [])
    try:
        parsed = build_parser().parse_args(["serve", *args])
    except SystemExit:
        pytest.fail(f"`endorm serve` rejects the container args {shlex.join(args)}")
    for name in list(os.environ):
        if name.startswith("ENDORM_"):
            monkeypatch.delenv(name)
    for name, value in env_of(docs, container).items():
        monkeypatch.setenv(name, value)
    return settings_from_args(parsed)


def prestop_seconds(container: dict) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop")
    if not pre_stop:
        return 0.0
    if "sleep" in pre_stop:  # native sleep action (Kubernetes >= 1.30)
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop.get("exec", {}).get("command", [])
    assert len(command) == 2 and command[0] in ("sleep", "/bin/sleep"), f"preStop is not a plain sleep: {command}"
    return float(command[1])


def validate_strict(doc: dict, version: str) -> None:
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        schema = json.loads((SCHEMAS / "servicemonitor-monitoring-v1.json").read_text())
        assert doc["kind"] == "ServiceMonitor", f"no schema for {doc['kind']}"
        jsonschema.Draft202012Validator(schema).validate(doc)
        return
    if (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS:  # Gateway API, Envoy Gateway (test_gateway.py)
        crd_validator(doc["apiVersion"], doc["kind"]).validate(doc)
        return
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.fixture(scope="module")
def k8s_version() -> str:
    version = kubernetes_validate.latest_version()
    assert Version(version) >= MIN_K8S, f"kubernetes-validate only knows Kubernetes {version}"
    return version


# ---------------------------------------------------------------- rendering and schemas


@kustomizations
def test_old_and_new_kubectl_render_the_same(name):
    found = renderers()
    require_renderer()
    if len(found) < 2:
        tool_missing(
            "kubectl",
            f"only one ({found[0]}); scripts/install-test-tools.sh unpacks Debian's 1.20 to compare with",
        )
    rendered = {str(r): {identity(d): d for d in render(name, r)} for r in found}
    (newest, reference), *others = rendered.items()
    assert reference, f"{name} renders nothing"
    for renderer, objects in others:
        assert objects.keys() == reference.keys(), f"{renderer} and {newest} render different objects"
        for key, doc in objects.items():
            assert doc == reference[key], f"{key} differs between {renderer} and {newest}"


@kustomizations
def test_every_object_validates_strictly(name, k8s_version):
    docs = render(name)
    assert docs
    for doc in docs:
        try:
            validate_strict(doc, k8s_version)
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(exc.message)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} invalid at {path}: {exc.message}")


def test_strict_validation_rejects_mistakes(k8s_version):
    """The validators used above do fail: an unknown field, a misspelt one, a wrong type."""
    mutations = [
        lambda d: server_container(d).update(bogusField=1),
        lambda d: server_container(d)["readinessProbe"].update(httpGett={"path": "/ready"}),
        lambda d: d["spec"].update(replicas="two"),
    ]
    for mutate in mutations:
        doc = deployment(render("gpu"))
        mutate(doc)
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(doc, k8s_version, strict=True)
    monitor = one(render("monitoring"), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        validate_strict(monitor, k8s_version)


# ---------------------------------------------------------------- images


@overlays
def test_images_are_pinned_to_the_project_version(overlay):
    version = project()["version"]
    images = [
        c["image"]
        for _, t in pod_templates(render(overlay))
        for c in t["spec"].get("initContainers", []) + t["spec"]["containers"]
    ]
    assert images
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{image} has no tag"
        assert tag != "latest" and "latest" not in image.split("@")[0].split(":")[-1]
        assert tag == f"{version}-{OVERLAYS[overlay]}", f"{image}: expected tag {version}-{OVERLAYS[overlay]}"


# ---------------------------------------------------------------- the server container


@overlays
def test_args_are_real_endorm_serve_flags(overlay, monkeypatch):
    docs = render(overlay)
    container = server_container(deployment(docs))
    # the image's ENTRYPOINT is `endorm serve`; a command here would replace it
    assert container.get("command") in (None, ["endorm", "serve"])
    # exact names: argparse would also take an abbreviation (--max-model for --max-model-len)
    [subcommands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    known = {opt for action in subcommands.choices["serve"]._actions for opt in action.option_strings}
    for arg in container.get("args", []):
        if arg.startswith("--"):
            assert arg.split("=", 1)[0] in known, f"{arg} is not a flag of `endorm serve`"
    settings = effective_settings(docs, monkeypatch)
    assert settings.host == "0.0.0.0", "the server must listen beyond loopback in a pod"
    assert settings.port == container_port(container, "http")


@overlays
def test_settings_keys_are_real_settings(overlay, monkeypatch):
    docs = render(overlay)
    container = server_container(deployment(docs))
    names = set(env_of(docs, container)) | {v["name"] for v in container.get("env", [])}
    fields = {f"ENDORM_{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(n for n in names if n.startswith("ENDORM_") and n not in fields)
    assert not unknown, f"not settings (Settings ignores unknown ENDORM_ variables silently): {unknown}"
    effective_settings(docs, monkeypatch)  # every value parses


@overlays
def test_api_keys_come_from_a_secret(overlay):
    docs = render(overlay)
    container = server_container(deployment(docs))
    [var] = [v for v in container.get("env", []) if v["name"] == "ENDORM_API_KEYS"]
    assert "value" not in var and var["valueFrom"]["secretKeyRef"]["name"]
    for cm in by_kind(docs, "ConfigMap"):
        assert "ENDORM_API_KEYS" not in cm.get("data", {}), "API keys in a ConfigMap"
    assert not by_kind(docs, "Secret"), "secrets are created by the operator, never rendered from the repo"


@overlays
def test_probes_hit_the_real_endpoints(overlay):
    docs = render(overlay)
    container = server_container(deployment(docs))
    paths = open_get_paths()
    expected = {"startupProbe": "/ready", "readinessProbe": "/ready", "livenessProbe": "/health"}
    for probe_name, path in expected.items():
        probe = container[probe_name]["httpGet"]
        assert probe["path"] == path and path in paths, f"{probe_name} on {probe['path']}"
        assert container_port(container, probe["port"]) == container_port(container, "http")
    startup = container["startupProbe"]
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    assert budget >= MIN_STARTUP_BUDGET_S, f"startup probe allows {budget} s for loading the model"


@overlays
def test_grace_period_covers_the_worst_case_exit(overlay, monkeypatch):
    """SIGTERM comes after preStop; the server then exits within ``exit_bound_s`` of its settings
    (one drain budget, which uvicorn's graceful shutdown shares, plus the rest of the shutdown;
    tests/http/test_uvicorn_limits.py holds a real uvicorn to it). The kubelet kills the pod at
    terminationGracePeriodSeconds, counted from the start of preStop."""
    docs = render(overlay)
    pod = deployment(docs)["spec"]["template"]["spec"]
    container = server_container(deployment(docs))
    settings = effective_settings(docs, monkeypatch)
    pre_stop = prestop_seconds(container)
    assert pre_stop > 0, "no preStop delay: endpoints are still being removed when the drain starts"
    grace = pod.get("terminationGracePeriodSeconds", 30)
    worst = pre_stop + exit_bound_s(settings)
    assert worst <= grace, (
        f"preStop {pre_stop} s + drain {settings.drain_timeout_s} s + shutdown {EXIT_ALLOWANCE_S} s = {worst} s"
        f" > terminationGracePeriodSeconds {grace} s"
    )


@overlays
def test_runs_as_the_images_non_root_user(overlay):
    docs = render(overlay)
    image_uid = dockerfile_user(parse_dockerfile(DOCKERFILES[OVERLAYS[overlay]]))
    templates = list(pod_templates(docs))
    assert templates
    for workload, template in templates:
        pod = template["spec"].get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, f"{workload['metadata']['name']}: runAsNonRoot"
        for c in template["spec"].get("initContainers", []) + template["spec"]["containers"]:
            sc = c.get("securityContext", {})
            uid = sc.get("runAsUser", pod.get("runAsUser"))
            assert uid == image_uid != 0, f"{c['name']} runs as {uid}, the image's user is {image_uid}"
            assert sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True
            assert sc.get("allowPrivilegeEscalation") is False
            assert sc.get("privileged") in (None, False)
            assert "ALL" in sc.get("capabilities", {}).get("drop", [])


@overlays
def test_volumes_cache_shm_and_offline(overlay, monkeypatch):
    docs = render(overlay)
    spec = deployment(docs)["spec"]["template"]["spec"]
    container = server_container(deployment(docs))
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for mount in mounts.values():
        assert mount["name"] in volumes, f"mount of undeclared volume {mount['name']}"
    shm = volumes[mounts["/dev/shm"]["name"]]
    assert shm["emptyDir"]["medium"] == "Memory"
    env = env_of(docs, container)
    assert env.get("HF_HUB_OFFLINE") == "1"

    def writable(path: str) -> bool:
        return any((path + "/").startswith(m.rstrip("/") + "/") and not mounts[m].get("readOnly") for m in mounts)

    settings = effective_settings(docs, monkeypatch)
    image_env = parse_dockerfile(DOCKERFILES[OVERLAYS[overlay]]).env
    writes = [env["HF_HOME"], str(settings.cache_dir), "/tmp", image_env["HOME"]]
    if container["securityContext"].get("readOnlyRootFilesystem"):
        for path in writes:
            assert writable(path), f"{path} is written at run time but is on the read-only root filesystem"
    for claim in (v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v):
        one(docs, "PersistentVolumeClaim", claim)


@overlays
def test_resources(overlay):
    container = server_container(deployment(render(overlay)))
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert quantity(requests["cpu"]) > 0 and quantity(requests["memory"]) > 0
    assert quantity(limits["memory"]) >= quantity(requests["memory"])


@gpu_overlays
def test_gpu_limit_placement_and_tensor_parallelism(overlay, monkeypatch):
    docs = render(overlay)
    spec = deployment(docs)["spec"]["template"]["spec"]
    container = server_container(deployment(docs))
    limit = container["resources"]["limits"].get(GPU)
    assert isinstance(limit, int) and limit >= 1, f"{GPU} limit {limit!r}"
    assert container["resources"]["requests"].get(GPU, limit) == limit
    assert any(t.get("key") == GPU and t.get("effect") in ("NoSchedule", None) for t in spec.get("tolerations", []))
    assert spec.get("nodeSelector"), "no node selector for GPU nodes"
    assert effective_settings(docs, monkeypatch).tensor_parallel_size == limit, "tensor parallel size != GPUs"


def test_cpu_overlay_asks_for_no_gpu():
    text = json.dumps(render("cpu"))
    assert GPU not in text


# ---------------------------------------------------------------- the other objects


@overlays
def test_hpa_scales_on_an_exported_per_pod_gauge(overlay):
    docs = render(overlay)
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    one(docs, target["kind"], target["name"])
    assert 1 <= hpa["spec"].get("minReplicas", 1) <= hpa["spec"]["maxReplicas"]
    assert "replicas" not in one(docs, target["kind"], target["name"])["spec"], (
        "replicas set next to an HPA: every apply resets the autoscaler"
    )
    exported = exported_metrics()
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert exported.get(name) == "gauge", f"{name} is not a gauge /metrics exports ({sorted(exported)})"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    # endorm_load_ratio is 1 when admission is full (429s): scale before that
    assert 0 < quantity(metric["pods"]["target"]["averageValue"]) < 1


@overlays
def test_selectors_match_the_pods(overlay):
    docs = render(overlay)
    dep = deployment(docs)
    labels = dep["spec"]["template"]["metadata"]["labels"]
    container = server_container(dep)
    assert labels_match(dep["spec"]["selector"], labels)
    service = one(docs, "Service")
    assert labels_match({"matchLabels": service["spec"]["selector"]}, labels)
    for port in service["spec"]["ports"]:
        container_port(container, port["targetPort"])
    pdb = one(docs, "PodDisruptionBudget")
    assert labels_match(pdb["spec"]["selector"], labels)
    min_replicas = one(docs, "HorizontalPodAutoscaler")["spec"].get("minReplicas", 1)
    if "minAvailable" in pdb["spec"]:
        assert isinstance(pdb["spec"]["minAvailable"], int) and pdb["spec"]["minAvailable"] < min_replicas, (
            "the PDB would block every node drain"
        )
    else:
        assert quantity(str(pdb["spec"]["maxUnavailable"]).rstrip("%")) > 0
    # no other workload's pods are caught by the server's selectors
    for workload, template in pod_templates(docs):
        if workload is not dep:
            assert not labels_match({"matchLabels": service["spec"]["selector"]}, template["metadata"]["labels"])


@overlays
def test_network_policy(overlay):
    docs = render(overlay)
    dep = deployment(docs)
    container = server_container(dep)
    policy = one(docs, "NetworkPolicy")
    assert labels_match(policy["spec"]["podSelector"], dep["spec"]["template"]["metadata"]["labels"])
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    http = container_port(container, "http")
    for rule in policy["spec"]["ingress"]:
        ports = [container_port(container, p["port"]) for p in rule.get("ports", [])]
        assert ports == [http], "ingress open beyond the HTTP port"
    for rule in policy["spec"]["egress"]:  # DNS only: weights come from the cache (HF_HUB_OFFLINE)
        assert rule.get("ports") and all(p["port"] == 53 for p in rule["ports"])
    assert_namespaces_pinned(policy)


def assert_namespaces_pinned(policy: dict) -> None:
    """Every peer's namespaceSelector names its namespace: an empty one lets any namespace label a pod in."""
    for rule in policy["spec"].get("ingress", []):
        for peer in rule.get("from", []):
            if "namespaceSelector" in peer:
                labels = (peer["namespaceSelector"] or {}).get("matchLabels", {})
                assert "kubernetes.io/metadata.name" in labels, f"namespace not pinned: {peer}"


def test_envoy_gateway_network_policy_pins_its_namespace():
    assert_namespaces_pinned(one(render("envoy-gateway"), "NetworkPolicy"))


@pytest.mark.parametrize("overlay", ["gpu", "cpu"])
def test_service_monitor_scrapes_metrics(overlay):
    monitor = one(render("monitoring"), "ServiceMonitor")
    service = one(render(overlay), "Service")
    assert labels_match(monitor["spec"]["selector"], service["metadata"]["labels"])
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint.get("path", "/metrics") == "/metrics" in open_get_paths()
    # the annotations for annotation-based discovery point at the same endpoint
    dep = deployment(render(overlay))
    annotations = dep["spec"]["template"]["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/scrape") == "true":
        assert int(annotations["prometheus.io/port"]) == container_port(server_container(dep), "http")
        assert annotations.get("prometheus.io/path", "/metrics") in open_get_paths()


def test_preload_job_fills_the_servers_cache():
    docs = render("gpu-model-cache")
    dep = deployment(docs)
    container = server_container(dep)
    job = one(docs, "Job")
    [loader] = job["spec"]["template"]["spec"]["containers"]

    def claim_mounts(spec: dict, c: dict) -> dict[str, str]:
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v
        }
        return {claims[m["name"]]: m["mountPath"] for m in c["volumeMounts"] if m["name"] in claims}

    server_claims = claim_mounts(dep["spec"]["template"]["spec"], container)
    assert server_claims, "the model cache is not on a PersistentVolumeClaim"
    assert claim_mounts(job["spec"]["template"]["spec"], loader) == server_claims
    assert env_of(docs, loader)["HF_HOME"] == env_of(docs, container)["HF_HOME"]
    assert env_of(docs, loader)["ENDORM_MODEL"] == env_of(docs, container)["ENDORM_MODEL"]
    assert "HF_HUB_OFFLINE" not in env_of(docs, loader)
    assert loader["image"] == container["image"], "the Job must run the server's image (same huggingface_hub)"


def test_preload_job_pins_the_revision_the_server_loads(monkeypatch):
    """The model cache overlay names one commit (org/name@<commit>) for the Job and the server alike; the
    Job's own script, run here with a recording snapshot_download, fetches that commit with the server's
    file patterns, and refuses an id that pins none."""
    import sys
    import types

    from endorm_server.models.sources import HUB_PATTERNS, split_hub_id

    docs = render("gpu-model-cache")
    [loader] = one(docs, "Job")["spec"]["template"]["spec"]["containers"]
    model = env_of(docs, loader)["ENDORM_MODEL"]
    repo_id, revision = split_hub_id(model)
    assert re.fullmatch(r"[0-9a-f]{40}", revision or ""), f"ENDORM_MODEL {model!r} pins no commit"
    assert effective_settings(docs, monkeypatch).model == model  # the server resolves that same snapshot
    assert loader["command"][:2] == ["python3", "-c"]
    script = compile(loader["command"][2], "preload-job", "exec")
    calls: list[tuple[str, dict]] = []
    hub = types.ModuleType("huggingface_hub")
    hub.snapshot_download = lambda repo, **kw: calls.append((repo, kw)) or "/models/huggingface/snapshot"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    monkeypatch.setenv("ENDORM_MODEL", model)
    exec(script, {"__name__": "__main__"})
    assert calls == [(repo_id, {"revision": revision, "allow_patterns": list(HUB_PATTERNS)})]
    for unpinned in (repo_id, f"{repo_id}@main"):
        monkeypatch.setenv("ENDORM_MODEL", unpinned)
        with pytest.raises(SystemExit, match="must pin a commit"):
            exec(script, {"__name__": "__main__"})
    assert len(calls) == 1


def test_guide_adapter_rule_serves_the_hpa_metric():
    """docs/deploy.md's prometheus-adapter rule exposes the metric the HPA reads."""
    import yaml

    guide = (KUSTOMIZATIONS["gpu"].parents[2] / "docs" / "deploy.md").read_text()
    rules = []
    for block in re.findall(r"```yaml\n(.*?)```", guide, re.S):
        for doc in yaml.safe_load_all(block):
            found = doc.get("rules") if isinstance(doc, dict) else None
            rules += found.get("custom", []) if isinstance(found, dict) else found or []
    assert rules, "no prometheus-adapter rule in docs/deploy.md"
    metric = one(render("gpu"), "HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert any(metric in rule["seriesQuery"] and rule.get("name", {}).get("as", metric) == metric for rule in rules)
