"""One input line of an OpenAI-format batch file -> a request to send, or that line's own error.

Only the envelope is checked here (JSON object, custom_id, method, url); the body is the server's to
validate, so a bad body gets the server's own 422.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

# The scoring routes a batch line may name (also under /v1/).
ROUTES = ("/score", "/compare", "/classify", "/get_reward")


@dataclass(frozen=True)
class BatchRequest:
    line: int  # 1-based line number in the input
    custom_id: str
    url: str  # as given: path, and for /get_reward maybe a query string
    body: Any

    @property
    def route(self) -> str:
        """The route without /v1 or the query string: /score, /compare, /classify, /get_reward."""
        path = urlsplit(self.url).path
        return path[3:] if path.startswith("/v1/") else path

    @property
    def target(self) -> str:
        """What is sent: the route (every route has its plain form; not all have a /v1/ one) and the query."""
        query = urlsplit(self.url).query
        return f"{self.route}?{query}" if query else self.route


@dataclass(frozen=True)
class LineError:
    """A line that is not a request this tool can send: its own output line, the rest go on."""

    line: int
    custom_id: str | None
    code: str  # invalid_json, invalid_line, unknown_url, duplicate_custom_id
    message: str

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "line": self.line}


def parse_line(text: str, line: int) -> BatchRequest | LineError:
    try:
        obj = json.loads(text)
    except ValueError as exc:
        return LineError(line, None, "invalid_json", f"line {line} is not JSON: {exc}")
    if not isinstance(obj, dict):
        return LineError(line, None, "invalid_line", f"line {line} is not a JSON object")
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid:
        return LineError(line, None, "invalid_line", f"line {line}: custom_id must be a non-empty string")
    method = obj.get("method", "POST")
    if method != "POST":
        return LineError(line, cid, "invalid_line", f"line {line}: method must be POST (got {method!r})")
    url = obj.get("url")
    if not isinstance(url, str) or not _known(url):
        return LineError(
            line, cid, "unknown_url", f"line {line}: url must be one of {', '.join(ROUTES)} (or /v1/...), got {url!r}"
        )
    if "body" not in obj:
        return LineError(line, cid, "invalid_line", f"line {line}: no body")
    return BatchRequest(line, cid, url, obj["body"])


def _known(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme or parts.netloc or parts.fragment:
        return False
    path = parts.path[3:] if parts.path.startswith("/v1/") else parts.path
    if path not in ROUTES:
        return False
    return not parts.query or path == "/get_reward"  # only /get_reward takes options in the query string


def duplicate(line: int, custom_id: str) -> LineError:
    return LineError(
        line,
        custom_id,
        "duplicate_custom_id",
        f"line {line}: custom_id {custom_id!r} was used by an earlier line; only the first is scored",
    )
