"""A forwarding proxy on 127.0.0.1 that loses answers on purpose: the request reaches the real server
(which computes and answers), then the proxy drops the connection or answers 503 in its place, so
the client retries a request the server already answered. One request per connection."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

import httpx

PASS, DROP, UNAVAILABLE = "pass", "drop", "503"

_KEEP = ("content-type", "x-request-id", "idempotent-replayed", "retry-after")


@dataclass
class LossyProxy:
    target: str
    plan: list[str] = field(default_factory=list)  # what to do with each request in turn; then PASS
    seen: list[dict[str, str]] = field(default_factory=list)  # the headers of each request
    answered: list[dict[str, str]] = field(default_factory=list)  # the server's headers, per request

    def __post_init__(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._http = httpx.Client(timeout=300)
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, body = data.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
            length = int(headers.get("content-length", "0"))
            while len(body) < length:
                body += conn.recv(65536)
            with self._lock:
                action = self.plan.pop(0) if self.plan else PASS
                self.seen.append(headers)
            fwd = {k: v for k, v in headers.items() if k not in ("host", "connection", "content-length")}
            resp = self._http.request(method, self.target + path, headers=fwd, content=body)
            with self._lock:
                self.answered.append(dict(resp.headers))
            if action == DROP:  # the server answered; the client never hears it
                conn.shutdown(socket.SHUT_RDWR)
                return
            if action == UNAVAILABLE:
                status = 503
                out = b'{"error": {"type": "unavailable", "code": "unavailable", "message": "lost", "param": null}}'
                extra = {"content-type": "application/json", "retry-after": "0"}
            else:
                status, out = resp.status_code, resp.content
                extra = {k: resp.headers[k] for k in _KEEP if k in resp.headers}
            lines_out = [f"HTTP/1.1 {status} X", f"content-length: {len(out)}", "connection: close"]
            lines_out += [f"{k}: {v}" for k, v in extra.items()]
            conn.sendall(("\r\n".join(lines_out) + "\r\n\r\n").encode("latin-1") + out)

    def close(self) -> None:
        self._sock.close()
        self._http.close()
