"""The FastAPI app: routers, the health check, the one error shape, the body size limit, the schema."""
from __future__ import annotations

import logging
from typing import Callable, Literal

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.gateway import errors, metrics, outages, routes_data, routes_exports, routes_keys, routes_runs
from services.gateway.limits import BodyLimit, StrictRoute
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


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: str
    broker: str


def openapi_with(app: FastAPI, extra: tuple) -> Callable[[], dict]:
    """The generated schema plus models that routes reference by hand (bodies read from the
    request directly, e.g. the prompt-set upload that takes JSON or multipart)."""

    def build() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in extra:
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                comps.update(js.pop("$defs", {}))
                comps[model.__name__] = js
            app.openapi_schema = schema
        return app.openapi_schema

    return build


def create_app() -> FastAPI:
    app = FastAPI(title="Autodidact", version="0.1.0")
    app.add_exception_handler(RequestValidationError, errors.on_validation_error)
    app.add_exception_handler(StarletteHTTPException, errors.on_http_error)
    app.add_exception_handler(OverflowError, errors.on_db_value_error)
    app.add_exception_handler(DataError, errors.on_db_value_error)
    outages.register(app)
    app.add_middleware(BodyLimit, limit=get_settings().max_body_bytes)
    app.add_middleware(metrics.RequestMetrics)  # outermost of ours: it also times the size checks
    app.add_route("/metrics", metrics.metrics_endpoint, include_in_schema=False)  # for Prometheus; no key
    health = APIRouter(route_class=StrictRoute)
    health.add_api_route("/healthz", healthz, methods=["GET"], tags=["health"], response_model=Health,
                         responses={503: {"model": Health, "description": "a backing service is down"}})
    app.include_router(health)
    app.include_router(routes_data.router)
    app.include_router(routes_runs.router)
    app.include_router(routes_keys.router)
    app.include_router(routes_exports.router)
    app.openapi = openapi_with(app, (errors.ErrorBody, *routes_data.EXTRA_SCHEMAS))
    return app


app = create_app()
