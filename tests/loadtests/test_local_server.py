"""The server launcher the tests, load tests and examples share (loadtests/server.py)."""

from __future__ import annotations

import socket

from loadtests.server import LocalServer


def test_a_port_taken_before_the_server_binds_it_is_replaced(tmp_path):
    """free_port() only says a port is free now; when another process binds it first (a second
    suite on the machine), the launcher starts the server again on another port, not a failure."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = LocalServer(["--model", "endorm-demo", "--engine", "transformers"], log_path=tmp_path / "server.log")
        server._use_port(port)  # as if free_port() had returned it just before the other process took it
        try:
            server.start().wait_ready()
            assert server.port != port and server.url.endswith(f":{server.port}")
            with socket.create_connection(("127.0.0.1", server.port), timeout=30):
                pass
        finally:
            server.stop()
    # a port the caller chose is the caller's: no silent move
    assert LocalServer(["--model", "endorm-demo"], log_path=tmp_path / "x.log", port=port).own_port is False
