"""docker-compose.yml and infra/Dockerfile cannot run here (no Docker engine), so check what would
make `docker compose up` fail or misbehave: every service has an image; our services run commands
that exist in our CLI; every queue has a worker; vLLM is the default generation server with
run-time LoRA loading; every AUTODIDACT_* variable the stack sets or the code reads is a Settings
field with a valid value; volumes are writable by the user that writes them; GPU services reserve
a GPU; the TGI refresh hook the workers call is in the image; Prometheus scrapes every service that
serves /metrics, and only those."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.main import get_command

from services.cli import app
from shared.config import Settings
from shared.queue import QUEUES

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "infra" / "Dockerfile").read_text()


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _ours(svc: dict) -> bool:
    return "build" in svc or svc.get("image", "").startswith("autodidact")


def _resolved(value) -> str:
    """A compose value with ${VAR:-default} interpolated as on a host that sets nothing."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def _env(svc: dict) -> dict[str, str]:
    return {k: _resolved(v) for k, v in (svc.get("environment") or {}).items()}


def _gpus(svc: dict) -> int:
    devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return sum(d.get("count", 0) for d in devices if "gpu" in d.get("capabilities", []))


def test_every_service_has_an_image_and_valid_dependencies(compose):
    services = compose["services"]
    expected = {"postgres", "redis", "vllm", "tgi", "gateway", "beat", "flower", "prometheus"} | {
        f"worker-{q}" for q in QUEUES}
    assert expected <= set(services)
    for name, svc in services.items():
        assert re.fullmatch(r"[\w./-]+(:[\w.-]+)?", svc.get("image", "")), f"{name} has no valid image"
        assert svc.get("image") != "autodidact:latest" or svc["build"]["dockerfile"] == "infra/Dockerfile"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert cond["condition"] in ("service_healthy", "service_started")
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy; it has no healthcheck"
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            assert source.startswith(".") or source in compose["volumes"], f"{name}: unknown volume {source}"


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


def test_every_queue_has_a_worker_and_beat_runs(compose):
    ours = [svc for svc in compose["services"].values() if _ours(svc)]
    served = {svc["command"][svc["command"].index("--queue") + 1] for svc in ours if svc["command"][0] == "worker"}
    assert served == set(QUEUES)
    assert sum(svc["command"][0] == "beat" for svc in ours) == 1  # one beat: two would double every sweep


def test_vllm_is_the_default_generation_server(compose):
    services = compose["services"]
    vllm = services["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai:") and "profiles" not in vllm
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    cmd = vllm["command"]
    assert "--enable-lora" in cmd and cmd[cmd.index("--model") + 1].startswith("/models/")
    port = cmd[cmd.index("--port") + 1]
    assert "artifacts:/artifacts:ro" in vllm["volumes"]  # adapters are loaded from the shared volume
    for name, svc in services.items():
        if not _ours(svc):
            continue
        env = _env(svc)
        assert env["AUTODIDACT_GENERATION_BACKEND"] == "openai", name
        assert env["AUTODIDACT_OPENAI_BASE_URL"] == f"http://vllm:{port}", name
        assert int(env["AUTODIDACT_OPENAI_MAX_LORAS"]) == int(cmd[cmd.index("--max-loras") + 1])
    assert "vllm" in services["worker-generation"]["depends_on"]
    assert services["tgi"]["profiles"] == ["tgi"]  # the alternative, started only when asked for


def test_every_autodidact_variable_is_a_valid_setting(compose):
    fields = set(Settings.model_fields)
    for name, svc in compose["services"].items():
        env = {k: v for k, v in _env(svc).items() if k.startswith("AUTODIDACT_")}
        unknown = sorted(k for k in env if k.removeprefix("AUTODIDACT_").lower() not in fields)
        assert not unknown, f"{name} sets {unknown}, which no Settings field reads"
        if env:
            Settings(**{k.removeprefix("AUTODIDACT_").lower(): v for k, v in env.items()})  # values validate


def test_every_variable_the_code_reads_is_a_setting():
    """Outside shared/config.py, an AUTODIDACT_* name in the code is a setting being read (the
    launcher's child marker is a protocol between processes, not a setting)."""
    fields = set(Settings.model_fields)
    protocol = {"AUTODIDACT_LAUNCHED"}
    for path in [*ROOT.glob("shared/**/*.py"), *ROOT.glob("services/**/*.py")]:
        if path.name == "config.py" and path.parent.name == "shared":
            continue
        for var in set(re.findall(r"AUTODIDACT_[A-Z_]+", path.read_text())) - protocol:
            assert var.removeprefix("AUTODIDACT_").lower() in fields, f"{path.relative_to(ROOT)} reads {var}"


def test_healthchecks_and_gpu_reservations(compose):
    services = compose["services"]
    for name in ("postgres", "redis", "vllm", "tgi", "gateway"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1
    assert "/healthz" in " ".join(services["gateway"]["healthcheck"]["test"])
    assert "/health" in " ".join(services["vllm"]["healthcheck"]["test"])
    for name in ("vllm", "tgi", "worker-training"):
        assert _gpus(services[name]) >= 1, f"{name} reserves no GPU"
    for name, svc in services.items():
        if name not in ("vllm", "tgi", "worker-training"):
            assert _gpus(svc) == 0, f"{name} reserves a GPU it does not use"


def test_volumes_are_writable_by_their_writers(compose):
    user = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.M)
    assert user and user[-1] not in ("root", "0"), "the image must run as an unprivileged user"
    app_user = user[-1]
    assert re.search(rf"useradd\b[^\n]*--create-home[^\n]*\b{app_user}\b", DOCKERFILE), "the user needs a home"
    owned = {path for m in re.finditer(r"chown\s+(\S+?):\S+\s+([^\n&\\]+)", DOCKERFILE)
             if m.group(1) == app_user for path in m.group(2).split()}
    for name, svc in compose["services"].items():
        if not _ours(svc):
            continue
        mounts = {v.split(":")[1]: v for v in svc["volumes"]}
        artifact_dir = _env(svc)["AUTODIDACT_ARTIFACT_DIR"]
        assert artifact_dir in mounts and not mounts[artifact_dir].endswith(":ro"), name
        assert artifact_dir in owned, f"{artifact_dir} is not created owned by {app_user} in the image"
    # NLTK data is written as the app user (into its home), not as root at build time
    assert DOCKERFILE.index(f"USER {app_user}") < DOCKERFILE.index("python -m shared.nltk_data")


def test_the_tgi_refresh_hook_is_wired(compose):
    services = compose["services"]
    hook = _env(services["worker-generation"])["AUTODIDACT_TGI_REFRESH_COMMAND"]
    script = hook.split()[0]
    assert script.startswith("/app/infra/") and (ROOT / "infra" / Path(script).name).exists()
    assert "COPY infra ./infra" in DOCKERFILE and "WORKDIR /app" in DOCKERFILE
    assert hook.format(adapter_id="v1", adapter_path="/artifacts/x").split()[1:] == ["v1", "/artifacts/x"]
    tgi = services["tgi"]
    assert tgi["entrypoint"][-1] == "/infra/tgi-supervise.sh" and "./infra:/infra:ro" in tgi["volumes"]
    assert tgi["environment"]["TGI_ADAPTERS_FILE"] == _env(services["worker-generation"])["TGI_ADAPTERS_FILE"]


def test_dockerfile_installs_the_cli():
    assert 'ENTRYPOINT ["autodidact"]' in DOCKERFILE and "pip install -e ." in DOCKERFILE


def _scrape_targets(config: dict) -> list[tuple[str, str, int, str]]:
    """(job, host, port, path) of every target of a Prometheus config: static targets and DNS names."""
    out = []
    for job in config["scrape_configs"]:
        path = job.get("metrics_path", "/metrics")
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                out.append((job["job_name"], host, int(port), path))
        for dns in job.get("dns_sd_configs", []):
            assert dns.get("type", "SRV") == "A", f"{job['job_name']}: compose's DNS answers A records, not SRV"
            out.extend((job["job_name"], name, int(dns["port"]), path) for name in dns["names"])
    return out


def _metrics_port(svc: dict) -> int | None:
    """The port on which one of our services serves /metrics: the gateway's API port, a worker's
    AUTODIDACT_WORKER_METRICS_PORT (0 or unset: none); None for everything else."""
    argv = svc.get("command") or []
    if not _ours(svc) or not argv:
        return None
    if argv[0] == "gateway":
        return int(argv[argv.index("--port") + 1]) if "--port" in argv else 8000
    if argv[0] == "worker":
        return int(_env(svc).get("AUTODIDACT_WORKER_METRICS_PORT", "0")) or None
    return None


def test_prometheus_scrapes_the_gateway_and_every_worker(compose):
    from services.gateway.main import create_app

    services = compose["services"]
    prom = services["prometheus"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prom["image"]), "pin a Prometheus release"
    config_file = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"]}
    assert mounts.get(config_file) == "./infra/prometheus.yml" and (ROOT / "infra" / "prometheus.yml").exists()
    config = yaml.safe_load((ROOT / "infra" / "prometheus.yml").read_text())
    targets = _scrape_targets(config)
    assert len({job for job, *_ in targets}) == len(config["scrape_configs"])  # no job without a target
    gateway_paths = {getattr(r, "path", None) for r in create_app().routes}
    for job, host, port, path in targets:
        assert host in services, f"job {job} scrapes {host}, which is no compose service"
        assert _metrics_port(services[host]) == port, f"job {job}: {host} serves no /metrics on port {port}"
        assert path == "/metrics" and (services[host]["command"][0] == "worker" or path in gateway_paths)
    exposing = {name for name, svc in services.items() if _metrics_port(svc)}
    assert exposing == {"gateway"} | {f"worker-{q}" for q in QUEUES}  # every worker serves metrics
    assert {host for _, host, _, _ in targets} == exposing, "a service that serves /metrics is not scraped"
