"""The operator's Grafana dashboard (deploy/monitoring/dashboards/endorm.json).

Static: the JSON against Grafana's own schemas (the dashboard kind, each panel plugin's
options, the Prometheus query), its layout, its provisioning ConfigMap, and every
``endorm_`` series it names against the service's registry.

Live: Debian's Prometheus scrapes a real ``endorm serve`` (1 s interval) while the test
drives it through 200s, 4xx, 429, 504 and 503 by control (the engine frozen, a drain held
open by a request whose body never comes); then every panel's PromQL, with the dashboard's
variables filled in, is evaluated through Prometheus' HTTP API at one scraped instant and
must return series, with the labels its legend names.
"""

from __future__ import annotations

import functools
import json
import math
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from endorm_server.http.metrics import Metrics
from endorm_server.http.reuse_metrics import ReuseCollector
from tests.conftest import API_KEY, tiny_server
from tests.deploy.kube import REPO, one, render
from tests.freeze import processes_frozen, server_engine
from tests.processes import stop_process
from tests.server import ServerProcess, free_port
from tests.tools import INSTALLED_BY, require_tool

DASHBOARD = REPO / "deploy" / "monitoring" / "dashboards" / "endorm.json"
GRAFANA_SCHEMAS = Path(__file__).parent / "schemas" / "grafana"  # source and version: README.md there
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PATIENCE_S = 120  # a deadline for states that must come; only reached when something is broken
DEADLINE_S = 8  # the test server's --request-timeout-s: how long a frozen request takes to become a 504
GRAFANA_VARIABLES = ("$__rate_interval", "$__range")  # the only built-ins the panels use
OWN_VARIABLES = ("job", "instance")
SELECTOR = 'job=~"$job", instance=~"$instance"'
PROBES = 'endpoint!~"/health|/ready|/metrics"'


# ---------------------------------------------------------------- the dashboard as data


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that queries (rows' nested panels included)."""
    out: list[dict[str, Any]] = []
    for panel in board["panels"]:
        out += panel.get("panels", []) if panel["type"] == "row" else [panel]
    return out


def targets(board: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in panels(board):
        for target in panel["targets"]:
            yield panel, target


def schema(kind: str) -> dict[str, Any]:
    return json.loads((GRAFANA_SCHEMAS / f"{kind}.jsonschema.json").read_text())


def definition(kind: str, name: str) -> dict[str, Any] | None:
    """One definition of a kind's schema, with the definitions its $refs resolve against."""
    definitions = schema(kind)["definitions"]
    return {"$ref": f"#/definitions/{name}", "definitions": definitions} if name in definitions else None


def schema_errors(board: dict[str, Any]) -> list[str]:
    """Everything Grafana's schemas reject: the dashboard, each panel's options and custom field
    config against its plugin's schema, each target against the Prometheus query schema."""

    def errors(validator_schema: dict[str, Any], doc: Any, where: str) -> list[str]:
        return [
            f"{where} {'.'.join(map(str, e.path))}: {e.message[:300]}"
            for e in jsonschema.Draft7Validator(validator_schema).iter_errors(doc)
        ]

    found = errors(schema("dashboard"), board, "dashboard")
    query = schema("prometheus")
    for panel in panels(board):
        where = f"panel {panel.get('id')} {panel.get('title')!r}"
        kind = panel["type"]
        assert (GRAFANA_SCHEMAS / f"{kind}.jsonschema.json").exists(), f"{where}: no schema for a {kind} panel"
        options = definition(kind, "Options")
        if options is not None:
            found += errors(options, panel.get("options", {}), f"{where} options")
        custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom")
        field = definition(kind, "FieldConfig")
        if custom is not None and field is not None:
            found += errors(field, custom, f"{where} fieldConfig.defaults.custom")
        for target in panel.get("targets", []):
            found += errors(query, target, f"{where} target {target.get('refId')}")
    return found


def unquoted(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def metric_names(expr: str) -> set[str]:
    """The series an expression reads (all of ours start endorm_ or vllm:)."""
    return set(re.findall(r"\b(?:endorm_[a-z_]+|vllm:[a-z_:]+)", unquoted(expr)))


def legend_labels(target: dict[str, Any]) -> set[str]:
    return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))


# ---------------------------------------------------------------- static checks


def test_dashboard_matches_grafanas_schemas():
    errors = schema_errors(dashboard())
    assert not errors, "\n".join(errors)


def test_schema_check_rejects_mistakes():
    """The checks above do fail: an unknown panel key, a misspelt query field, a wrong type,
    a panel option its plugin does not have."""
    mutations: list[Callable[[dict[str, Any]], None]] = [
        lambda b: panels(b)[0].update(titel="x"),
        lambda b: panels(b)[1]["targets"][0].update(exprr="up"),
        lambda b: panels(b)[2]["gridPos"].update(w="wide"),
        lambda b: next(p for p in panels(b) if p["type"] == "timeseries")["options"].update(legnd={}),
    ]
    for mutate in mutations:
        board = dashboard()
        mutate(board)
        assert schema_errors(board), "a broken dashboard passed the schema check"


def test_layout_ids_and_queries():
    board = dashboard()
    ids = [p["id"] for p in board["panels"]] + [p["id"] for p in panels(board) if p not in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: dict[tuple[int, int], str] = {}
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, f"{panel['title']} runs past the grid"
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in panels(board):
        assert panel["targets"], f"{panel['title']} has no query"
        assert panel.get("description"), f"{panel['title']} does not say what it tells the operator"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        for target in panel["targets"]:
            expr = target["expr"]
            assert SELECTOR in expr, f"{panel['title']} {target['refId']}: not filtered by $job and $instance"
            for name in re.findall(r"\$\{?(\w+)", expr):
                assert f"${name}" in GRAFANA_VARIABLES or name in OWN_VARIABLES, f"unknown variable ${name} in {expr}"


def test_endorm_series_exist_in_the_service_registry():
    """Every endorm_ series a panel reads is one /metrics exports (vllm: ones: the live test)."""
    metrics = Metrics()
    metrics.registry.register(ReuseCollector(lambda: None))
    metrics.requests.labels("/score", "200")  # labelled families export samples once a child exists
    metrics.latency.labels("/score")
    metrics.tokens.labels("prompt")
    metrics.rejections.labels("draining")
    metrics.model_info.info({"model": "m", "system_fingerprint": "fp"})
    text = generate_latest(metrics.registry).decode()
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    for panel, target in targets(dashboard()):
        for name in metric_names(target["expr"]):
            if name.startswith("endorm_"):
                assert name in exported, f"{panel['title']!r} reads {name}, which the service does not export"


def test_monitoring_kustomization_provisions_the_dashboard():
    config_map = one(render("monitoring"), "ConfigMap", "endorm-grafana-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"  # Grafana's sidecar convention
    assert json.loads(config_map["data"]["endorm.json"]) == dashboard()


# ---------------------------------------------------------------- live: Prometheus scraping a server


class Prometheus:
    """Debian's Prometheus server on 127.0.0.1 scraping one target every second, storage in a temp dir."""

    def __init__(self, target: str, workdir: Path) -> None:
        self.workdir = workdir
        config = workdir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: endorm\n"
            "    metrics_path: /metrics\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n"
        )
        self.config = config
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> Prometheus:
        for _ in range(5):  # a free port now may be taken before Prometheus binds it: take another
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            log = open(self.workdir / f"prometheus-{port}.log", "wb")
            self.proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + PATIENCE_S
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    if httpx.get(self.url + "/-/ready", timeout=5).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            self.stop()
        raise RuntimeError(f"prometheus did not start; log:\n{self.log_tail()}")

    def log_tail(self) -> str:
        logs = sorted(self.workdir.glob("prometheus-*.log"))
        return logs[-1].read_text(errors="replace")[-3000:] if logs else ""

    def stop(self) -> None:
        stop_process(self.proc)

    def api(self, path: str, **params: Any) -> Any:
        r = httpx.get(self.url + path, params=params, timeout=PATIENCE_S)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{path} {params}: {r.status_code} {body}"
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("/api/v1/query", **params)
        assert data["resultType"] == "vector", data
        return data["result"]

    def last_scrape(self) -> float:
        """Timestamp of the newest sample scraped from the server (0 before the first)."""
        result = self.query('timestamp(up{job="endorm"} == 1)')
        return float(result[0]["value"][1]) if result else 0.0

    def scraped_after(self, moment: float) -> float:
        """Wait until a scrape later than ``moment`` (wall clock) is stored; its timestamp."""
        _wait_for(lambda: self.last_scrape() > moment, f"a scrape after {moment:.1f}")
        return self.last_scrape()


def _wait_for(state: Callable[[], Any], what: str, timeout_s: float = PATIENCE_S) -> None:
    """Poll until ``state()`` holds: it must come, so the deadline is only a guard against a hang."""
    deadline = time.monotonic() + timeout_s
    while not state():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.05)


def _gauge(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=PATIENCE_S).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def _group(seed: int, size: int = 4, prompt_len: int = 256) -> list[dict[str, Any]]:
    """A GRPO-like group: one prompt of whole KV blocks (so siblings hit the prefix cache), size responses."""
    prompt = [(seed * 11 + i) % 480 + 5 for i in range(prompt_len)]
    return [{"prompt_ids": prompt, "response_ids": [(seed + j) % 400 + 7, 8, 9, 10 + j]} for j in range(size)]


def _heavy(n: int) -> dict[str, Any]:
    return {
        "items": [
            {"prompt_ids": [(i * 7 + k) % 500 + 5 for k in range(240)], "response_ids": [7, 8, 9, 10]} for i in range(n)
        ]
    }  # 244 tokens an item


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    return require_tool("prometheus", "Debian's `prometheus` package; " + INSTALLED_BY, candidates=[PROMETHEUS])


@pytest.fixture(scope="module")
def dashboard_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """A server of its own (the test drains it): auth on, a 4000-token budget with a 0.2 s admission
    wait (429s while the engine is frozen), a short deadline (504s while frozen), a long drain."""
    with tiny_server(
        tmp_path_factory,
        "dashboard",
        "--api-key",
        API_KEY,
        "--max-inflight-tokens",
        "4000",
        "--queue-timeout-s",
        "0.2",
        "--request-timeout-s",
        str(DEADLINE_S),
        "--drain-timeout-s",
        "600",
    ) as proc:
        yield proc


def _normal_load(client: httpx.Client, url: str, seed: int) -> dict[str, Any]:
    """Scoring that succeeds (retried past a 504 on a starved machine), and the 4xx a caller can cause."""

    def until_ok(send: Callable[[], httpx.Response]) -> httpx.Response:
        deadline = time.monotonic() + PATIENCE_S
        while True:
            r = send()
            if r.status_code == 200:
                return r
            assert r.status_code == 504 and time.monotonic() < deadline, (r.status_code, r.text)

    for k in range(3):
        body = {"items": _group(seed * 10 + k)}
        until_ok(functools.partial(client.post, "/score", json=body))
    compared = until_ok(
        lambda: client.post(
            "/compare", json={"prompt": f"Is {seed} + 2 = {seed + 2}?", "responses": ["Yes.", "No.", "Maybe."]}
        )
    ).json()
    assert client.post("/score", json={}).status_code == 422
    assert client.post("/score", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
    assert httpx.post(url + "/score", json={"items": _group(1)}, timeout=PATIENCE_S).status_code == 401
    assert client.get("/no-such-route").status_code == 404
    return compared


def _overload(server: ServerProcess) -> tuple[list[int], int]:
    """With the engine frozen: one request fills the budget, three more wait their 0.2 s and get 429,
    and the first passes the deadline (504). Returns the late statuses and the first's."""
    url = server.url
    headers = {"Authorization": f"Bearer {API_KEY}"}

    def post(body: dict[str, Any]) -> int:
        return httpx.post(url + "/score", json=body, headers=headers, timeout=PATIENCE_S).status_code

    with ThreadPoolExecutor(4) as pool, processes_frozen(server_engine(server)):
        first = pool.submit(post, _heavy(16))  # 3904 of the 4000 tokens
        _wait_for(lambda: _gauge(url, "endorm_in_flight_requests") == 1, "the first request admitted")
        late = list(pool.map(post, [_heavy(4)] * 3))  # 976 tokens each: no room while frozen
        first_status = first.result(timeout=PATIENCE_S)  # the engine cannot finish it: the deadline ends it
    _wait_for(lambda: _gauge(url, "endorm_engine_unfinished_sequences") == 0, "engine idle after the aborts")
    return late, first_status


def _hold_drain_open(server: ServerProcess) -> socket.socket:
    """A POST the app has begun reading (uvicorn answers 100 Continue on its first read) whose body
    never comes: the drain waits for it, so the server lives on after SIGTERM until the socket closes."""
    head = (
        f"POST /score HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {API_KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE_S)
    sock.sendall(head)
    seen = b""
    while b"\r\n\r\n" not in seen:
        chunk = sock.recv(4096)
        assert chunk, "server closed the held request"
        seen += chunk
    assert seen.startswith(b"HTTP/1.1 100"), seen
    return sock


def _label_values(prom: Prometheus, query: str, start: float, end: float) -> list[str]:
    """A Grafana ``label_values(selector, label)`` variable query, through Prometheus' API."""
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
    assert match, f"not a label_values query: {query}"
    return prom.api(
        f"/api/v1/label/{match.group(2)}/values", **{"match[]": match.group(1)}, start=f"{start:.3f}", end=f"{end:.3f}"
    )


def test_every_panel_returns_data_from_prometheus_scraping_a_live_server(prometheus_binary, dashboard_server, tmp_path):
    server = dashboard_server
    prom = Prometheus(f"127.0.0.1:{server.port}", tmp_path).start()
    try:
        started = time.time()
        prom.scraped_after(started)  # the series exist in Prometheus before any load
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=PATIENCE_S
        ) as client:
            compared = _normal_load(client, server.url, 1)
            prom.scraped_after(time.time())
            late, first = _overload(server)
            assert first == 504, first
            assert 429 in late, late  # all three, unless the machine stalled past the deadline
            prom.scraped_after(time.time())
            compared = _normal_load(client, server.url, 2)  # a second round: series born in the first now have a rate
            prom.scraped_after(time.time())
            exported = {s.name for f in text_string_to_metric_families(client.get("/metrics").text) for s in f.samples}
            held = _hold_drain_open(server)
            try:
                server.signal(signal.SIGTERM)
                _wait_for(lambda: client.get("/ready").status_code == 503, "/ready 503 (drain begun)")
                draining = client.post("/score", json={"items": _group(3)})
                assert draining.status_code == 503 and draining.headers.get("retry-after"), draining.text
                # two scrapes after the 503, so its series has a rate; then one instant for every panel
                _wait_for(
                    lambda: prom.query(
                        'count_over_time(endorm_requests_total{endpoint="/score", status="503"}[10m]) >= 2'
                    ),
                    "two scrapes of the 503",
                )
                at = prom.last_scrape()
                evaluate_dashboard(prom, started, at, server, exported, compared)
            finally:
                held.close()
    finally:
        prom.stop()


def evaluate_dashboard(
    prom: Prometheus, started: float, at: float, server: ServerProcess, exported: set[str], compared: dict[str, Any]
) -> None:
    board = dashboard()
    window = f"{math.ceil(at - started) + 5}s"  # covers all of the load, like a range of "last 5 minutes"
    values: dict[str, str] = {"$__rate_interval": window, "$__range": window}
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        for name, value in values.items():
            query = query.replace(name, value)
        found = _label_values(prom, query, started, at)
        assert found, f"variable {variable['name']}: {variable['query']} finds no values"
        values[f"${variable['name']}"] = "|".join(found)
    assert values["$job"] == "endorm" and values["$instance"] == f"127.0.0.1:{server.port}", values

    empty, missing_labels, report = [], [], []
    for panel, target in targets(board):
        expr = target["expr"]
        for name in sorted(values, key=len, reverse=True):  # $__range before a shorter name it starts with
            expr = expr.replace(name, values[name])
        assert "$" not in expr, f"unfilled variable in {expr}"
        for name in metric_names(expr):
            assert name in exported, f"{panel['title']!r} reads {name}, which the live /metrics does not export"
        result = prom.query(expr, at)
        where = f"{panel['title']!r} {target['refId']}"
        if not result:
            empty.append(f"{where}: {expr}")
            continue
        for series in result:
            lacking = legend_labels(target) - set(series["metric"])
            if lacking:
                missing_labels.append(f"{where}: legend names {sorted(lacking)}, series has {series['metric']}")
        report.append(f"{where}: {len(result)} series, e.g. {result[0]['metric']} = {result[0]['value'][1]}")
    print("\n".join(report))
    assert not empty, "panels with no data:\n" + "\n".join(empty)
    assert not missing_labels, "\n".join(missing_labels)

    # what the panels show is what the server said
    info = prom.query('endorm_model_info{job="endorm"}', at)
    assert {s["metric"]["model"] for s in info} == {compared["model"]}
    assert {s["metric"]["system_fingerprint"] for s in info} == {compared["system_fingerprint"]}
    by_status = {
        s["metric"]["status"]
        for s in prom.query(
            f'sum by (status) (increase(endorm_requests_total{{job="endorm", {PROBES}}}[{window}]))', at
        )
    }
    assert {"200", "401", "404", "415", "422", "429", "503", "504"} <= by_status, by_status
    skipped = prom.query(f'sum(increase(endorm_lm_head_rows_total{{state="skipped"}}[{window}]))', at)
    hits = prom.query(f"sum(increase(endorm_prefix_cache_hit_tokens_total[{window}]))", at)
    assert float(skipped[0]["value"][1]) > 0 and float(hits[0]["value"][1]) > 0, (skipped, hits)
