"""``endorm batch --ray`` on a real two-node Ray cluster on 127.0.0.1 (Ray's own multi-node test
cluster: two raylets, one GCS): one tiny engine per actor, an actor per node, every row back once."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pyarrow.parquet as pq
import pytest

from tests.batch.conftest import run_batch, score_line, write_lines

NODE_CPUS = 3  # logical: an actor takes 2 (so one fits a node), the reads the rest
MiB = 1024 * 1024
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[object]:
    """Both nodes on 127.0.0.1. Ray on Linux rewrites a loopback address to the host's own IP before
    connecting (services.resolve_ip_for_localhost); RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps it on
    loopback, for the nodes and for ``endorm batch`` (a child: it inherits the variable)."""
    from ray.cluster_utils import Cluster

    before = os.environ.get(LOOPBACK_ONLY)
    os.environ[LOOPBACK_ONLY] = "0"
    common = {"num_cpus": NODE_CPUS, "object_store_memory": 100 * MiB, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={**common, "include_dashboard": False})
    try:
        cluster.add_node(**common)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()
        if before is None:
            os.environ.pop(LOOPBACK_ONLY, None)
        else:
            os.environ[LOOPBACK_ONLY] = before


def test_two_nodes_score_every_row_once(ray_cluster, tmp_path):
    lines = [score_line(f"r{i:03d}", f"{i} - 1 =", f" {i - 1}", return_tokens=True) for i in range(40)]
    lines.append("not json")
    path = write_lines(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.parquet"
    proc = run_batch(
        path,
        out,
        "--ray",
        ray_cluster.address,  # type: ignore[attr-defined]
        "--ray-actors",
        "2",
        "--ray-num-cpus",
        "2",
        "--max-in-flight",
        "2",
    )
    rows = pq.read_table(out).to_pylist()
    assert sorted(r["custom_id"] or "-" for r in rows) == sorted(["-", *(f"r{i:03d}" for i in range(40))])
    assert all(r["status_code"] == 200 and r["token_rewards"] for r in rows if r["custom_id"])
    per_node = dict(re.findall(r"([0-9a-f]{56}): (\d+)", proc.stdout.split("rows per Ray node:")[-1]))
    nodes = {n.node_id for n in ray_cluster.list_all_nodes()}  # type: ignore[attr-defined]
    assert set(per_node) == nodes and len(nodes) == 2, proc.stdout
    assert all(int(n) > 0 for n in per_node.values()) and sum(map(int, per_node.values())) == 40
    assert not out.with_name(out.name + ".todo.parquet").exists()
