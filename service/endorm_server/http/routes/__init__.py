"""The HTTP routes, one module per protocol; each maps its body to score items and runs
:mod:`endorm_server.http.pipeline`."""

from endorm_server.http.routes import classify, inspect, meta, openrlhf, score

ROUTERS = (meta.open_router, meta.keyed_router, score.router, openrlhf.router, classify.router, inspect.router)

__all__ = ["ROUTERS"]
