"""The FastAPI app: routers, the health check, and error shape for validation failures."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import DataError

from services.gateway import routes_data, routes_runs
from shared.config import get_settings
from shared.db import get_engine

log = logging.getLogger(__name__)


def healthz() -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # report, don't raise: this endpoint exists to say what is down
        checks["database"] = f"error: {type(exc).__name__}"
    settings = get_settings()
    if settings.execution == "celery":
        try:
            import redis

            redis.Redis.from_url(settings.redis_url, socket_timeout=2).ping()
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"error: {type(exc).__name__}"
    else:
        checks["broker"] = "inline"
    ok = all(v in ("ok", "inline") for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "degraded", **checks}, status_code=200 if ok else 503)


def out_of_range(_request: Request, exc: Exception) -> JSONResponse:
    """Numbers the database cannot hold (ids past 64 bits, huge offsets) are the caller's error."""
    log.info("out-of-range number in a request: %s", exc)
    return JSONResponse({"detail": [{"loc": ["request"], "msg": "a number in the request (an id, offset or "
                                     "limit) is out of range"}]}, status_code=422)


def create_app() -> FastAPI:
    app = FastAPI(title="Autodidact", version="0.1.0")
    app.add_exception_handler(OverflowError, out_of_range)
    app.add_exception_handler(DataError, out_of_range)
    app.add_api_route("/healthz", healthz, methods=["GET"], tags=["health"])
    app.include_router(routes_data.router)
    app.include_router(routes_runs.router)
    return app


app = create_app()
