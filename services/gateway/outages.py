"""What the API answers while a backing service is down: 503 with a JSON body and Retry-After,
never a plain-text 500. A request that reaches the database while Postgres restarts (the key
lookup included) fails with a connection error somewhere inside SQLAlchemy or psycopg; the broker
(Redis) fails inside kombu. Both are the server's temporary state, not the caller's mistake, and
a retry later is the right move. Registered by `main.create_app`.
"""
from __future__ import annotations

import logging

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import exc as sa_exc

log = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = 5

DATABASE_DOWN = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, psycopg.OperationalError)


def database_down(_request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", exc)
    return _unavailable("the database is unavailable; retry in a few seconds")


def broker_down(_request: Request, exc: Exception) -> JSONResponse:
    log.warning("broker unavailable: %s", exc)
    return _unavailable("the task broker is unavailable; retry in a few seconds")


def _unavailable(message: str) -> JSONResponse:
    # The API's error shape: a list of {loc, msg, type}; nothing about the request is at fault.
    return JSONResponse({"detail": [{"loc": [], "msg": message, "type": "unavailable"}]}, status_code=503,
                        headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def register(app: FastAPI) -> None:
    for exc_type in DATABASE_DOWN:
        app.add_exception_handler(exc_type, database_down)
    app.add_exception_handler(BrokerError, broker_down)
