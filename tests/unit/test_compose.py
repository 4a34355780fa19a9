"""docker-compose.yml cannot run here (no Docker engine), so check its shape: every service has an
image, our services run commands that exist in our CLI, every queue has a worker, the backing
services and the gateway have healthchecks, GPU services reserve a GPU."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.main import get_command

from services.cli import app
from shared.queue import QUEUES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _ours(svc: dict) -> bool:
    return "build" in svc or svc.get("image", "").startswith("autodidact")


def test_every_service_has_an_image_and_valid_dependencies(compose):
    services = compose["services"]
    expected = {"postgres", "redis", "tgi", "gateway", "beat", "flower"} | {f"worker-{q}" for q in QUEUES}
    assert expected <= set(services)
    for name, svc in services.items():
        assert svc.get("image"), f"{name} has no image"
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
    for vol in ("pgdata", "artifacts"):
        assert vol in compose["volumes"]


def test_our_commands_exist_in_the_cli(compose):
    cli = get_command(app)
    for name, svc in compose["services"].items():
        if not _ours(svc):
            continue
        argv = svc["command"]
        sub = cli.commands.get(argv[0])
        assert sub is not None, f"{name}: `autodidact {argv[0]}` does not exist"
        # parse the rest of the command line with the real command's parser
        ctx = sub.make_context(argv[0], list(argv[1:]), resilient_parsing=False)
        if argv[0] == "worker":
            assert ctx.params["queue"] in QUEUES


def test_every_queue_has_a_worker(compose):
    served = {svc["command"][svc["command"].index("--queue") + 1]
              for svc in compose["services"].values() if _ours(svc) and svc["command"][0] == "worker"}
    assert served == set(QUEUES)


def test_healthchecks_and_gpu_reservations(compose):
    services = compose["services"]
    for name in ("postgres", "redis", "tgi", "gateway"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1
    assert "/healthz" in " ".join(services["gateway"]["healthcheck"]["test"])
    for name in ("tgi", "worker-training"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    assert services["worker-generation"]["environment"]["AUTODIDACT_TGI_URLS"].startswith("http://tgi")


def test_dockerfile_installs_the_cli():
    text = (ROOT / "infra" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["autodidact"]' in text and "pip install -e ." in text
