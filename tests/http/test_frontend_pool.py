"""The front end never blocks the engine's event loop: tokenization runs in the scorer's worker pool.

Decided by control: request A's tokenization is held at a gate (tests/gated_serve.py) inside a real
``endorm serve`` (real uvicorn, real vLLM engine); while it is held, request B is tokenized, scored and
answered. Were tokenization on the event loop, B could not even be read off its socket until A's gate
opened, and the test would fail at its deadline.
"""

from __future__ import annotations

import sys
import threading

import httpx

from tests.conftest import COMMON, tiny_model
from tests.server import ServerProcess

Q = [{"role": "user", "content": "2+2?"}]


class GatedServer(ServerProcess):
    def _use_port(self, port: int) -> None:
        super()._use_port(port)
        self.cmd = [sys.executable, "-m", "tests.gated_serve", *self.cmd[3:]]


def _wait_for(path, thread: threading.Thread, deadline_s: float = 120) -> None:
    """Until ``path`` exists (the gate was entered); fails early if the request thread ended instead."""
    waited = threading.Event()
    for _ in range(int(deadline_s / 0.02)):
        if path.exists():
            return
        assert thread.is_alive(), "the gated request ended before reaching the gate"
        waited.wait(0.02)
    raise AssertionError(f"{path.name} never appeared")


def test_a_request_is_served_while_another_is_being_tokenized(tmp_path):
    gates = tmp_path / "gates"
    gates.mkdir()
    server = GatedServer(
        ["--model", str(tiny_model("llama")), *COMMON],
        log_path=tmp_path / "server.log",
        env={"ENDORM_TEST_GATE_DIR": str(gates)},
    ).start()
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            held: dict[str, httpx.Response] = {}
            a = threading.Thread(
                target=lambda: held.setdefault(
                    "a",
                    client.post(
                        "/score", json={"items": [{"messages": Q, "response": "4 GATE-a"}], "return_tokens": True}
                    ),
                )
            )
            a.start()
            _wait_for(gates / "a.entered", a)
            for body in (
                {"items": [{"messages": Q, "response": "4"}], "return_tokens": True},
                {"items": [{"messages": Q, "response": "5"}, {"prompt": "2+2=", "response": "4"}]},
            ):
                b = client.post("/score", json=body)  # served while A is still in its tokenization
                assert b.status_code == 200, b.text
                assert len(b.json()["results"]) == len(body["items"])
            assert a.is_alive() and "a" not in held
            (gates / "a.release").touch()
            a.join(120)
            assert held["a"].status_code == 200, held["a"].text
            assert held["a"].json()["results"][0]["tokens"]  # per-token results, built in the pool
    finally:
        server.stop()
