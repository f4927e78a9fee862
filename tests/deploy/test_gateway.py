"""deploy/overlays/envoy-gateway: the Gateway, HTTPRoute and BackendTrafficPolicy, rendered by real
kubectl and validated offline against the CRDs' own OpenAPI schemas (vendored in
tests/deploy/schemas/gateway: Gateway API v1.6.1 standard channel, Envoy Gateway v1.9.0), then
checked against the service and the SDK: the route reaches the endorm Service and every API route
but /metrics, the policy applies to that route and hashes on the header the SDK sends.

What the schema validation covers: types, enums, patterns (durations, names), bounds, required
fields, and unknown fields (strict, as the API server's strict field validation; kube.py
``crd_validator``). What it cannot cover: the CRDs' CEL rules (``x-kubernetes-validations``,
e.g. "consistentHash.type Cookie needs consistentHash.cookie"; jsonschema ignores unknown
keywords, so they are silently skipped) and list-type uniqueness; the tests below check by hand
the CEL pairings the overlay depends on. No cluster, no Envoy Gateway needed.
"""

from __future__ import annotations

import re

import jsonschema
import pytest

from endorm_client.affinity import AFFINITY_HEADER
from endorm_server.config import Settings
from endorm_server.http.routes import ROUTERS
from endorm_server.http.server import MAX_REQUEST_HEAD_BYTES
from tests.deploy.kube import CRD_SCHEMAS, by_kind, crd_validator, labels_match, one, quantity, render

OVERLAY = "envoy-gateway"
CR_GROUPS = ("gateway.networking.k8s.io/", "gateway.envoyproxy.io/")
# Labels Envoy Gateway (v1.9.0, internal/infrastructure/kubernetes/proxy/resource.go and
# internal/gatewayapi/translator.go) puts on the proxy pods of a Gateway.
ENVOY_PROXY_LABELS = {
    "app.kubernetes.io/name": "envoy",
    "app.kubernetes.io/component": "proxy",
    "app.kubernetes.io/managed-by": "envoy-gateway",
}
# Served on the pods only (no API key; Prometheus scrapes the pods).
NOT_ON_THE_GATEWAY = {"/metrics"}


def validate(doc: dict) -> None:
    crd_validator(doc["apiVersion"], doc["kind"]).validate(doc)


def route_to_service(docs: list[dict]) -> tuple[dict, dict]:
    """The HTTPRoute whose backendRefs name the endorm Service, and that Service."""
    service = one(docs, "Service", "endorm")
    routes = [
        r
        for r in by_kind(docs, "HTTPRoute")
        for rule in r["spec"]["rules"]
        for ref in rule.get("backendRefs", [])
        if ref.get("group", "") == "" and ref.get("kind", "Service") == "Service" and ref["name"] == "endorm"
    ]
    assert len(routes) == 1, f"{len(routes)} HTTPRoute rules send to the endorm Service"
    return routes[0], service


def duration_s(value: str) -> float:
    """A Gateway API / Envoy Gateway duration ("180s", "1m30s", "250ms") in seconds."""
    parts = re.findall(r"([0-9]{1,5})(h|ms|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3}[u] for n, u in parts)


def path_matched(path: str, matches: list[dict]) -> bool:
    """Gateway API path matching (PathPrefix matches whole path elements)."""
    for match in matches or [{"path": {"type": "PathPrefix", "value": "/"}}]:
        spec = match.get("path", {"type": "PathPrefix", "value": "/"})
        value = spec["value"]
        if spec["type"] == "Exact" and path == value:
            return True
        if spec["type"] == "PathPrefix" and (path == value or path.startswith(value.rstrip("/") + "/")):
            return True
        if spec["type"] == "RegularExpression" and re.fullmatch(value, path):
            return True
    return False


# ---------------------------------------------------------------- schemas


def test_custom_resources_validate_against_their_crds():
    docs = render(OVERLAY)
    custom = [d for d in docs if d["apiVersion"].startswith(CR_GROUPS)]
    assert {d["kind"] for d in custom} == {"Gateway", "HTTPRoute", "BackendTrafficPolicy", "ClientTrafficPolicy"}
    for doc in custom:
        assert (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS, f"no vendored CRD schema for {doc['apiVersion']}"
        try:
            validate(doc)
        except jsonschema.ValidationError as exc:
            path = ".".join(str(p) for p in exc.absolute_path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid at {path}: {exc.message}")


def _hash(policy: dict) -> dict:
    return policy["spec"]["loadBalancer"]["consistentHash"]


def _rule(route: dict) -> dict:
    return route["spec"]["rules"][0]


def _listener(gateway: dict) -> dict:
    return gateway["spec"]["listeners"][0]


BTP, ROUTE, GATEWAY, CTP = "BackendTrafficPolicy", "HTTPRoute", "Gateway", "ClientTrafficPolicy"
HTTP_TIMEOUT = "spec.timeout.http"
LB, HASH, RETRY_ON = "spec.loadBalancer", "spec.loadBalancer.consistentHash", "spec.retry.retryOn"
# (what, kind, where the validator must report it, the mistake)
MISTAKES = [
    ("unknown load balancer type", BTP, f"{LB}.type", lambda p: p["spec"]["loadBalancer"].update(type="Hash")),
    ("unknown hash type", BTP, f"{HASH}.type", lambda p: _hash(p).update(type="Header2")),
    ("misspelt field", BTP, HASH, lambda p: _hash(p).update(hedaers=_hash(p).pop("headers"))),
    (
        "header without a name",
        BTP,
        f"{HASH}.headers.0",
        lambda p: _hash(p)["headers"][0].update(nam=_hash(p)["headers"][0].pop("name")),
    ),
    (
        "status code out of range",
        BTP,
        f"{RETRY_ON}.httpStatusCodes.0",
        lambda p: p["spec"]["retry"]["retryOn"].update(httpStatusCodes=[700]),
    ),
    (
        "unknown retry trigger",
        BTP,
        f"{RETRY_ON}.triggers.4",
        lambda p: p["spec"]["retry"]["retryOn"]["triggers"].append("503"),
    ),
    ("target without a group", BTP, "spec.targetRefs.0", lambda p: p["spec"]["targetRefs"][0].pop("group")),
    (
        "duration without a unit",
        ROUTE,
        "spec.rules.0.timeouts.request",
        lambda r: _rule(r)["timeouts"].update(request="180"),
    ),
    (
        "unknown path match type",
        ROUTE,
        "spec.rules.0.matches.0.path.type",
        lambda r: _rule(r)["matches"][0]["path"].update(type="Prefix"),
    ),
    (
        "port as a string",
        ROUTE,
        "spec.rules.0.backendRefs.0.port",
        lambda r: _rule(r)["backendRefs"][0].update(port="8000"),
    ),
    ("experimental-channel field", ROUTE, "spec.rules.0", lambda r: _rule(r).update(retry={"attempts": 2})),
    (
        "unknown allowedRoutes value",
        GATEWAY,
        "spec.listeners.0.allowedRoutes.namespaces.from",
        lambda g: _listener(g)["allowedRoutes"]["namespaces"].update({"from": "Any"}),
    ),
    ("listener name not a DNS label", GATEWAY, "spec.listeners.0.name", lambda g: _listener(g).update(name="HTTP")),
    ("listener port 0", GATEWAY, "spec.listeners.0.port", lambda g: _listener(g).update(port=0)),
    (
        "header timeout without a unit",
        CTP,
        f"{HTTP_TIMEOUT}.requestHeadersReceivedTimeout",
        lambda p: p["spec"]["timeout"]["http"].update(requestHeadersReceivedTimeout="10"),
    ),
    (
        "misspelt timeout field",
        CTP,
        HTTP_TIMEOUT,
        lambda p: p["spec"]["timeout"]["http"].update(
            headersTimeout=p["spec"]["timeout"]["http"].pop("requestHeadersReceivedTimeout")
        ),
    ),
    (
        "buffer limit not a quantity",
        CTP,
        "spec.connection.bufferLimit",
        lambda p: p["spec"]["connection"].update(bufferLimit="8 MiB"),
    ),
]


@pytest.mark.parametrize("kind,where,mutate", [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_validator_rejects_mistakes(kind, where, mutate):
    """The validator bites: each mistake, made in the rendered object, fails validation there."""
    doc = one(render(OVERLAY), kind)
    validate(doc)  # valid as rendered
    mutate(doc)
    errors = list(crd_validator(doc["apiVersion"], doc["kind"]).iter_errors(doc))
    assert errors, "the mistake passed validation"
    assert {".".join(str(p) for p in e.absolute_path) for e in errors} == {where}, [e.message for e in errors]


def test_cel_rules_are_not_checked_here():
    """A limit of this validation, stated as a test: consistentHash type Cookie without a
    ``cookie`` (and with ``headers``) passes JSON Schema; only the CRD's CEL rule, evaluated by
    the API server, rejects it. Hence the explicit pairing checks in the policy test below."""
    policy = one(render(OVERLAY), "BackendTrafficPolicy")
    policy["spec"]["loadBalancer"]["consistentHash"]["type"] = "Cookie"
    validate(policy)


# ---------------------------------------------------------------- what the objects do


def test_route_attaches_to_the_gateway_and_reaches_the_endorm_service():
    docs = render(OVERLAY)
    route, service = route_to_service(docs)
    [parent] = route["spec"]["parentRefs"]
    assert parent.get("group", "gateway.networking.k8s.io") == "gateway.networking.k8s.io"
    assert parent.get("kind", "Gateway") == "Gateway" and "namespace" not in parent
    gateway = one(docs, "Gateway", parent["name"])
    listeners = {listener["name"]: listener for listener in gateway["spec"]["listeners"]}
    listener = listeners[parent["sectionName"]] if "sectionName" in parent else next(iter(listeners.values()))
    assert listener["protocol"] in ("HTTP", "HTTPS")
    assert listener.get("allowedRoutes", {}).get("namespaces", {}).get("from", "Same") in ("Same", "All")
    service_ports = {p["port"] for p in service["spec"]["ports"]}
    deployment = one(docs, "Deployment", "endorm")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels_match({"matchLabels": service["spec"]["selector"]}, pod_labels)
    for rule in route["spec"]["rules"]:
        for ref in rule["backendRefs"]:
            assert ref["name"] == service["metadata"]["name"] and ref["port"] in service_ports


def test_every_api_route_is_on_the_gateway_and_metrics_is_not():
    route, _ = route_to_service(render(OVERLAY))
    matches = [m for rule in route["spec"]["rules"] for m in rule.get("matches", [])]
    paths = {r.path for router in ROUTERS for r in router.routes}
    assert NOT_ON_THE_GATEWAY <= paths
    for path in sorted(paths):
        concrete = re.sub(r"\{[^}]+\}", "x", path)  # /inspect/{name} -> /inspect/x
        if path in NOT_ON_THE_GATEWAY:
            assert not path_matched(concrete, matches), f"{path} is served through the Gateway"
        else:
            assert path_matched(concrete, matches), f"the HTTPRoute does not route {path}"


def test_policy_hashes_the_route_on_the_sdk_affinity_header():
    docs = render(OVERLAY)
    route, _ = route_to_service(docs)
    policy = one(docs, "BackendTrafficPolicy")
    assert policy["spec"]["targetRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": route["metadata"]["name"]}
    ]
    assert "namespace" not in policy["metadata"] and "namespace" not in route["metadata"]  # policies are local
    balancer = policy["spec"]["loadBalancer"]
    assert balancer["type"] == "ConsistentHash"
    consistent = balancer["consistentHash"]
    # the CEL rules' pairings (type <-> the one field set), which jsonschema does not check
    fields = {"Header": "header", "Headers": "headers", "Cookie": "cookie", "QueryParams": "queryParams"}
    assert consistent["type"] == "Headers", "Envoy Gateway >= 1.6: `Header` is deprecated for `Headers`"
    assert {k for k in fields.values() if k in consistent} == {fields[consistent["type"]]}
    assert [h["name"] for h in consistent["headers"]] == [AFFINITY_HEADER]


def test_route_timeout_outlasts_the_server_deadline():
    """Envoy's default route timeout (15 s) would cut large /score batches; the route's must exceed
    the server's own deadline (a 504 with the server's error body) so the server answers."""
    docs = render(OVERLAY)
    route, _ = route_to_service(docs)
    config = one(docs, "ConfigMap", "endorm-config")["data"]
    deadline = float(config.get("ENDORM_REQUEST_TIMEOUT_S", Settings.model_fields["request_timeout_s"].default))
    for rule in route["spec"]["rules"]:
        timeouts = rule["timeouts"]
        assert duration_s(timeouts["request"]) > deadline
        # Envoy Gateway uses backendRequest as the route timeout when the route has no retry
        assert "backendRequest" not in timeouts


def _gateway_settings(docs: list[dict]) -> Settings:
    """The server settings the ConfigMap sets (ENDORM_* values over the defaults) that these checks read."""
    config = one(docs, "ConfigMap", "endorm-config")["data"]
    names = ("body_timeout_s", "max_body_bytes", "request_timeout_s")
    values = {n: config[f"ENDORM_{n.upper()}"] for n in names if f"ENDORM_{n.upper()}" in config}
    return Settings(**values)


def test_client_policy_bounds_slow_clients_at_the_gateway():
    """What a bare ``endorm serve`` cannot bound (headers trickled slowly: uvicorn has no header
    timeout; tests/http/test_uvicorn_limits.py), Envoy bounds for every client of the Gateway."""
    docs = render(OVERLAY)
    policy = one(docs, "ClientTrafficPolicy")
    gateway = one(docs, "Gateway")
    assert policy["spec"]["targetRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway["metadata"]["name"]}
    ]
    assert "namespace" not in policy["metadata"] and "namespace" not in gateway["metadata"]  # policies are local
    settings = _gateway_settings(docs)
    http = policy["spec"]["timeout"]["http"]
    headers_s = duration_s(http["requestHeadersReceivedTimeout"])
    request_s = duration_s(http["requestReceivedTimeout"])
    assert 0 < headers_s <= 30, "0 disables Envoy's header timeout; minutes would let a slow client sit"
    # the server's own body deadline answers first (a 408 with its error body), and Envoy's comes before
    # the route's timeout
    assert (
        headers_s + settings.body_timeout_s
        <= request_s
        < duration_s(_rule(route_to_service(docs)[0])["timeouts"]["request"])
    )
    # Envoy keeps a body to retry it up to the connection's buffer limit: every body the server takes
    buffer = quantity(policy["spec"]["connection"]["bufferLimit"])
    assert settings.max_body_bytes <= buffer <= 4 * settings.max_body_bytes
    assert MAX_REQUEST_HEAD_BYTES >= 60 * 1024, "the pods refuse heads that Envoy (60 KiB by default) passes on"


def test_retries_503_on_another_replica_but_not_resets():
    retry = one(render(OVERLAY), "BackendTrafficPolicy")["spec"]["retry"]
    on = retry["retryOn"]
    assert 503 in on["httpStatusCodes"] and "retriable-status-codes" in on["triggers"]
    assert 429 not in on["httpStatusCodes"], "admission 429s are the client's to back off"
    assert not {"reset", "5xx", "gateway-error"} & set(on["triggers"]), "a request that broke a replica is replayed"
    assert 1 <= retry["numRetries"] <= 3
    total = one(render(OVERLAY), "HTTPRoute")["spec"]["rules"][0]["timeouts"]["request"]
    assert duration_s(retry["perRetry"]["backOff"]["maxInterval"]) * retry["numRetries"] < duration_s(total)


def test_network_policy_admits_the_gateways_proxies():
    docs = render(OVERLAY)
    gateway = one(docs, "Gateway")
    proxy_labels = {
        **ENVOY_PROXY_LABELS,
        "gateway.envoyproxy.io/owning-gateway-name": gateway["metadata"]["name"],
        "gateway.envoyproxy.io/owning-gateway-namespace": "default",
    }
    policy = one(docs, "NetworkPolicy")
    peers = [peer for rule in policy["spec"]["ingress"] for peer in rule.get("from", [])]
    # proxies run in envoy-gateway-system (Envoy Gateway's default), pinned by name: no other namespace
    pinned = {"kubernetes.io/metadata.name": "envoy-gateway-system"}
    assert any(
        (peer.get("namespaceSelector") or {}).get("matchLabels") == pinned
        and labels_match(peer.get("podSelector", {}), proxy_labels)
        for peer in peers
    ), "no ingress peer admits the Gateway's Envoy pods"
    assert all(peer.get("namespaceSelector") != {} for peer in peers), "a peer admits every namespace"
    other = {**proxy_labels, "gateway.envoyproxy.io/owning-gateway-name": "another-gateway"}
    in_envoy_namespace = [p for p in peers if (p.get("namespaceSelector") or {}).get("matchLabels") == pinned]
    assert not any(labels_match(peer.get("podSelector", {}), other) for peer in in_envoy_namespace), (
        "the proxies of every Gateway in the cluster are admitted"
    )
