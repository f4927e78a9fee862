"""Render deploy/ with real kubectl binaries and pick the rendered objects apart.

Renderers, in order of preference (newest first when several are found):
- the ``kubectl`` on PATH (``kubectl kustomize``, any version);
- Debian's ``kubernetes-client`` (kubectl 1.20, kustomize v2.0.3), which
  ``scripts/install-test-tools.sh`` unpacks into ``.cache/kubernetes-client``;
- ``ENDORM_KUBECTL``: extra kubectl paths, ``:``-separated.
There is no kustomize renderer in Python, so with no kubectl the tests skip (fail under CI=true).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import yaml

from tests.tools import tool_missing

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DEBIAN_KUBECTL = REPO / ".cache" / "kubernetes-client" / "usr" / "bin" / "kubectl"

# overlay -> the image flavour it runs (Dockerfile for gpu, Dockerfile.cpu for cpu)
OVERLAYS = {"gpu": "gpu", "cpu": "cpu", "gpu-model-cache": "gpu", "envoy-gateway": "gpu"}
GPU_OVERLAYS = [name for name, flavour in OVERLAYS.items() if flavour == "gpu"]
KUSTOMIZATIONS = {**{name: DEPLOY / "overlays" / name for name in OVERLAYS}, "monitoring": DEPLOY / "monitoring"}
DOCKERFILES = {"gpu": REPO / "Dockerfile", "cpu": REPO / "Dockerfile.cpu"}
SERVER_CONTAINER = "endorm"
GATEWAY_SCHEMAS = Path(__file__).parent / "schemas" / "gateway"
# (apiVersion, kind) of a custom resource -> its CRD's openAPIV3Schema (schemas/gateway/README.md)
CRD_SCHEMAS = {
    ("gateway.networking.k8s.io/v1", "Gateway"): GATEWAY_SCHEMAS / "gateway-gateway.networking.k8s.io-v1.json",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): GATEWAY_SCHEMAS / "httproute-gateway.networking.k8s.io-v1.json",
    ("gateway.envoyproxy.io/v1alpha1", "BackendTrafficPolicy"): (
        GATEWAY_SCHEMAS / "backendtrafficpolicy-gateway.envoyproxy.io-v1alpha1.json"
    ),
    ("gateway.envoyproxy.io/v1alpha1", "ClientTrafficPolicy"): (
        GATEWAY_SCHEMAS / "clienttrafficpolicy-gateway.envoyproxy.io-v1alpha1.json"
    ),
}


@dataclass(frozen=True)
class Renderer:
    path: str
    version: str  # kubectl's client gitVersion, e.g. v1.20.2
    kustomize: str  # its kustomize ("v2.0.3" in kubectl < 1.21, which does not report it)

    @property
    def key(self) -> tuple[int, int]:
        match = re.match(r"v?(\d+)\.(\d+)", self.version)
        return (int(match.group(1)), int(match.group(2))) if match else (0, 0)

    def __str__(self) -> str:
        return f"kubectl {self.version} (kustomize {self.kustomize})"


def _versions(path: str) -> tuple[str, str] | None:
    try:
        out = subprocess.run(
            [path, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=300, check=True
        ).stdout
        info = json.loads(out)
        return info["clientVersion"]["gitVersion"], info.get("kustomizeVersion", "v2.0.3")
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        return None


@functools.cache
def renderers() -> tuple[Renderer, ...]:
    candidates = [shutil.which("kubectl"), str(DEBIAN_KUBECTL)]
    candidates += [p for p in os.environ.get("ENDORM_KUBECTL", "").split(":") if p]
    found: dict[str, Renderer] = {}
    for path in candidates:
        if not path or not os.access(path, os.X_OK):
            continue
        real = os.path.realpath(path)
        if real in found:
            continue
        versions = _versions(path)
        if versions is not None:
            found[real] = Renderer(path, *versions)
    return tuple(sorted(found.values(), key=lambda r: r.key, reverse=True))


def require_renderer() -> Renderer:
    found = renderers()
    if not found:
        tool_missing(
            "kubectl",
            "none to render deploy/ (no Python renderer for kustomize exists): run "
            "scripts/install-test-tools.sh (unpacks Debian's kubernetes-client into .cache/) or put kubectl on PATH",
        )
    return found[0]


@functools.cache
def _render_text(kubectl: str, kustomization: str) -> str:
    proc = subprocess.run([kubectl, "kustomize", kustomization], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"{kubectl} kustomize {kustomization} failed:\n{proc.stderr}")
    return proc.stdout


def render(name: str, renderer: Renderer | None = None) -> list[dict]:
    """The documents of one kustomization (fresh copies: tests may mutate them)."""
    renderer = renderer or require_renderer()
    text = _render_text(renderer.path, str(KUSTOMIZATIONS[name]))
    return [doc for doc in yaml.safe_load_all(text) if doc]


def identity(doc: dict) -> tuple[str, str, str, str]:
    meta = doc.get("metadata", {})
    return doc["apiVersion"], doc["kind"], meta.get("namespace", ""), meta["name"]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    matches = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}{' ' + name if name else ''}, rendered {len(matches)}"
    return matches[0]


def pod_templates(docs: list[dict]) -> Iterator[tuple[dict, dict]]:
    """(workload, pod template) for every workload that runs pods."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc, doc["spec"]["template"]
        elif doc["kind"] == "CronJob":
            yield doc, doc["spec"]["jobTemplate"]["spec"]["template"]


def server_container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    matches = [c for c in containers if c["name"] == SERVER_CONTAINER]
    assert len(matches) == 1, f"Deployment has no single container named {SERVER_CONTAINER!r}"
    return matches[0]


def labels_match(selector: dict, labels: dict) -> bool:
    """A LabelSelector (matchLabels / matchExpressions) against a label set."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def container_port(container: dict, port: int | str) -> int:
    """A probe's / Service's port (name or number) resolved against the container."""
    for spec in container.get("ports", []):
        if port in (spec.get("name"), spec["containerPort"]):
            return spec["containerPort"]
    raise AssertionError(f"port {port!r} is not a port of container {container['name']}")


_QUANTITY_SUFFIX = {
    "m": 1e-3,
    "": 1,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity(value: int | float | str) -> float:
    """A Kubernetes resource quantity ("600m", "16Gi", 1) as a number."""
    if isinstance(value, (int, float)):
        return float(value)
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", value)
    assert match and match.group(2) in _QUANTITY_SUFFIX, f"not a quantity: {value!r}"
    return float(match.group(1)) * _QUANTITY_SUFFIX[match.group(2)]


def project() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def pinned(extra: str, package: str) -> str:
    """The exact version an extra of pyproject.toml pins a package to."""
    for requirement in project()["optional-dependencies"][extra]:
        match = re.fullmatch(rf"{re.escape(package)}\s*==\s*([\w.]+)", requirement.strip())
        if match:
            return match.group(1)
    raise AssertionError(f"the {extra!r} extra pins no {package}==")


def _strict(schema: dict) -> dict:
    """A CRD schema that rejects unknown fields, as the API server's strict field validation
    (kubectl's default since 1.27) does: every object schema of the structure (``properties``,
    ``items``, ``additionalProperties``; not the value checks under ``allOf`` / ``anyOf`` /
    ``oneOf`` / ``not``) that has ``properties`` and neither ``additionalProperties`` nor
    ``x-kubernetes-preserve-unknown-fields`` gets ``additionalProperties: false``."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: _strict(sub) for name, sub in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = _strict(out[key])
    return out


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    """A validator for one custom resource kind from its vendored CRD schema (strict, see
    ``_strict``). The ``x-kubernetes-*`` keywords are unknown to JSON Schema and ignored, so the
    CRD's CEL rules (``x-kubernetes-validations``) and list-type uniqueness are not checked."""
    path = CRD_SCHEMAS.get((api_version, kind))
    assert path is not None, f"no vendored CRD schema for {api_version} {kind}"
    schema = _strict(json.loads(path.read_text()))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)
