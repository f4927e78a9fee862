"""``GET /inspect``: the token-level reward inspector, one static page shipped in the package.

The page and its assets are static and open (no key needed to load them); the page itself asks for the
API key when the server has one and sends it on its own API calls (/v1/models, /score, /compare).
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

router = APIRouter(include_in_schema=False)

_ASSETS = {
    "inspector.js": "text/javascript; charset=utf-8",
    "inspector.css": "text/css; charset=utf-8",
}
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def _read(name: str) -> bytes:
    return resources.files("endorm_server.http").joinpath("inspector", name).read_bytes()


@router.get("/inspect")
async def inspect_page() -> Response:
    return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=_HEADERS)


@router.get("/inspect/{name}")
async def inspect_asset(name: str) -> Response:
    if name not in _ASSETS:
        raise HTTPException(status_code=404, detail="no such inspector asset")
    return Response(_read(name), media_type=_ASSETS[name], headers=_HEADERS)
