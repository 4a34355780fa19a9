"""A real gateway process (`autodidact gateway`, uvicorn) on a loopback port, on the test Postgres
and Redis of `services_env`, with keys of two workspaces: for the API client and the remote CLI."""
from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import Workers, _key, wait_for


@dataclass
class LiveGateway:
    url: str
    admin: str  # admin key of workspace "client-a"
    member: str  # member key of "client-a"
    other: str  # admin key of workspace "client-b"
    procs: Workers


def start_gateway(procs: Workers, timeout: float) -> str:
    """Start `autodidact gateway` as one of `procs` on a free loopback port; its URL once /healthz answers."""
    from tests.private_servers import free_port

    port = free_port()
    procs.start("gateway", ["gateway", "--host", "127.0.0.1", "--port", str(port), "--no-migrate"])
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=timeout, what="the gateway process")
    return url


@pytest.fixture(scope="session")
def live_gateway(services_env, tmp_path_factory) -> LiveGateway:
    procs = Workers(services_env, tmp_path_factory.mktemp("gateway-logs"))
    try:
        url = start_gateway(procs, timeout=90)
    except AssertionError:
        print(procs.logs())
        procs.stop_all()
        raise
    yield LiveGateway(url, _key("client-a"), _key("client-a", "member"), _key("client-b"), procs)
    procs.stop_all()
