"""The API client (services/client.py) and the remote CLI (services/cli_remote.py) against a real
gateway process on loopback (uvicorn) and the test Postgres: every client method at least once,
error answers carrying the server's message, and the CLI commands run with typer's CliRunner.

Runs whose pairs, plot or outcome a test needs are written to the database directly with rounds
that are not `running`, so a conductor of the session's workers (when an earlier test started
them) never touches them; tests/e2e/test_cli_e2e.py watches a real run to its end.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.client import FINISHED, ApiError, Client
from shared.models import utcnow

ITEMS = [{"prompt": f"write about the river {i}", "reference": f"the river {i} is calm ."} for i in range(5)]
NO_COMMA = [{"id": "punctuation:no_comma", "kwargs": {}}]
EVAL = {"prompt_strict_acc": 0.5, "prompt_loose_acc": 0.75, "instruction_strict_acc": 0.5, "n": 4,
        "mean_response_words": 12.0, "ci95": {"prompt_strict_acc": [0.25, 0.75]}}
STAGES = {"generate": {"status": "succeeded", "seconds": 3.2, "shards": 2, "shards_done": 2},
          "pairs": {"status": "succeeded", "seconds": 0.1, "shards": 1, "shards_done": 1},
          "train": {"status": "succeeded", "seconds": 9.0, "shards": 1, "shards_done": 1}}


@pytest.fixture
def client(live_gateway):
    with Client(live_gateway.url, live_gateway.admin) as c:
        yield c


def cli(live_gateway, *args: str, key: str | None = None):
    from services.cli import app

    # Wide enough that no table cell wraps (the assertions read whole values).
    result = CliRunner().invoke(app, [*args, "--url", live_gateway.url, "--api-key", key or live_gateway.admin],
                                env={"COLUMNS": "200"})
    assert "Traceback" not in result.output, result.output
    return result


def stored_run(workspace: str, prompt_set_id: int, *, status: str, error: str | None = None) -> int:
    """A spin run written to the database as if its round 1 had run (samples' pairs, held-out
    metrics of the start and the round), with the given run status."""
    from shared import crud
    from shared.db import session_scope
    from shared.models import PreferencePair, Round, Run

    with session_scope() as s:
        ws = crud.get_or_create_workspace(s, name=workspace)
        run = Run(workspace_id=ws.id, method="spin", base_model="tiny", prompt_set_ids=[prompt_set_id], config={},
                  status=status, error=error, finished_at=utcnow() if status in FINISHED else None)
        s.add(run)
        s.flush()
        rnd = Round(run_id=run.id, number=1, status="succeeded", stages=STAGES, finished_at=utcnow(),
                    metrics={"pairs": 2, "train": {"loss": 0.4321}, "eval_base": {**EVAL, "prompt_strict_acc": 0.25},
                             "eval": EVAL, "train_steps": [{"step": 1, "loss": 0.6}, {"step": 2, "loss": 0.4}]})
        s.add(rnd)
        s.flush()
        for p in crud.prompts_of_sets(s, prompt_set_ids=[prompt_set_id])[:2]:
            s.add(PreferencePair(round_id=rnd.id, prompt_id=p.id, source="gold_vs_generated",
                                 chosen=f"good {p.position}", rejected=f"bad {p.position}"))
        return run.id


# ---------------------------------------------------------------- the client
def test_health_and_base_models(client, tiny_model):
    assert client.health().status == "ok"
    names = client.base_models()
    assert "gemma" in names and Path(tiny_model).name in names


def test_prompt_sets_json_upload_paging_and_export(client, tmp_path):
    a = client.create_prompt_set("json-set", ITEMS, description="five rivers")
    assert (a.name, a.size, a.split, a.description) == ("json-set", 5, "train", "five rivers")
    again = client.create_prompt_set("json-set", ITEMS, description="five rivers", idempotency_key="set-once")
    replay = client.create_prompt_set("json-set", ITEMS, description="five rivers", idempotency_key="set-once")
    assert replay.id == again.id != a.id  # the same Idempotency-Key creates once

    path = tmp_path / "held.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"say {i} without commas", "constraints": NO_COMMA}) + "\n"
                            for i in range(3)))
    b = client.upload_prompt_set(path, split="heldout")
    assert (b.name, b.size, b.split) == ("held.jsonl", 3, "heldout")

    listed = [ps.id for ps in client.prompt_sets(page_size=1)]  # one set per page: the client follows cursors
    assert listed[:3] == [b.id, again.id, a.id] and listed == sorted(listed, reverse=True)
    assert client.prompt_set(a.id).name == "json-set"
    prompts = list(client.prompts(a.id, page_size=2))  # 3 pages
    assert [p.position for p in prompts] == [0, 1, 2, 3, 4] and prompts[4].reference == "the river 4 is calm ."
    assert list(client.export_prompt_set(a.id)) == ITEMS
    got = client.download_prompt_set(b.id, tmp_path / "out.jsonl")
    assert got.lines == 3 and [json.loads(x)["constraints"] for x in got.path.read_text().splitlines()] == [NO_COMMA] * 3


def test_runs_pairs_plot_steps_cancel_and_add_sets(client, live_gateway, tiny_model, tmp_path):
    ps = client.create_prompt_set("run-set", ITEMS)
    more = client.create_prompt_set("more", ITEMS[:2])
    run = client.create_run("spin", Path(tiny_model).name, [ps.id], rounds=2, config={"max_new_tokens": 8},
                            idempotency_key="run-once")
    assert run.status in ("queued", "running") and run.round_details[0].number == 1
    assert client.create_run("spin", Path(tiny_model).name, [ps.id], rounds=2, config={"max_new_tokens": 8},
                             idempotency_key="run-once").id == run.id
    assert client.run(run.id).method == "spin"
    assert client.add_prompt_sets(run.id, [more.id]).prompt_set_ids == [ps.id, more.id]
    assert client.cancel_run(run.id).status == "cancelled"
    with pytest.raises(ApiError) as err:
        client.cancel_run(run.id)
    assert err.value.status_code == 409 and "already ended with status 'cancelled'" in str(err.value)

    done = stored_run("client-a", ps.id, status="succeeded")
    assert [r.id for r in client.runs(page_size=1)][:2] == [done, run.id]
    steps = client.train_steps(done, 1)
    assert steps.series == {"train_steps": [{"step": 1, "loss": 0.6}, {"step": 2, "loss": 0.4}]}
    pairs = list(client.pairs(done))
    assert [p["chosen"][0]["content"] for p in pairs] == ["good 0", "good 1"]
    assert list(client.pairs(done, round_number=2)) == []
    assert client.download_pairs(done, tmp_path / "pairs.jsonl").lines == 2
    assert client.plot(done)[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.download_plot(done, tmp_path / "p.png").path.read_bytes()[:4] == b"\x89PNG"
    assert client.wait(done, interval=0.01).status == "succeeded"
    with pytest.raises(ApiError) as err:
        client.plot(run.id)
    assert err.value.status_code == 409 and "has no evaluation yet" in err.value.message


def test_models_list_get_promote(client, live_gateway, tiny_model):
    ps = client.create_prompt_set("model-set", ITEMS[:1])
    client.create_run("spin", Path(tiny_model).name, [ps.id])  # publishes the base version
    versions = list(client.models(page_size=1))
    base = next(v for v in versions if v.kind == "base")
    assert client.model(base.id).key == base.key
    assert client.promote_model(base.id).promoted is True
    with Client(live_gateway.url, live_gateway.member) as member, pytest.raises(ApiError) as err:
        member.promote_model(base.id)
    assert err.value.status_code == 403 and "needs an admin key" in str(err.value)


def test_keys_create_list_revoke(client, live_gateway):
    made = client.create_key(role="member", expires_in_seconds=3600)
    assert made.key.startswith(made.prefix) and made.state == "active"
    assert made.id in [k.id for k in client.keys()]
    with Client(live_gateway.url, made.key) as new:
        assert isinstance(new.base_models(), list)
        assert client.revoke_key(made.id).state == "revoked"
        with pytest.raises(ApiError) as err:
            new.base_models()
    assert err.value.status_code == 401 and "revoked API key" in str(err.value)


def test_errors_carry_the_servers_message(client, live_gateway, tmp_path):
    with pytest.raises(ApiError) as err:
        client.create_run("spin", "gemma", [1], rounds=1000)
    assert err.value.status_code == 422 and err.value.errors[0]["loc"] == ["rounds"]
    assert "rounds: Input should be less than or equal to 100" in str(err.value)

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"prompt": ""}) + "\n")
    with pytest.raises(ApiError) as err:
        client.upload_prompt_set(bad)
    assert err.value.status_code == 422 and "file.line 2.prompt" in str(err.value)

    with pytest.raises(ApiError) as err:
        client.run(2_000_000_000)
    assert err.value.status_code == 404 and str(err.value).endswith("run 2000000000 not found")
    with Client(live_gateway.url, live_gateway.other) as other, pytest.raises(ApiError) as err:
        other.prompt_set(next(client.prompt_sets()).id)  # another workspace's id: indistinguishable from missing
    assert err.value.status_code == 404

    with Client(live_gateway.url, "") as anonymous, pytest.raises(ApiError) as err:
        list(anonymous.runs())
    assert err.value.status_code == 401 and "AUTODIDACT_API_KEY" in str(err.value)

    from tests.private_servers import free_port

    with Client(f"http://127.0.0.1:{free_port()}", "k", retries=1) as nowhere, pytest.raises(ApiError) as err:
        nowhere.run(1)
    assert err.value.status_code is None and err.value.transient and "cannot reach the gateway" in str(err.value)


def test_url_and_key_come_from_the_settings(live_gateway, monkeypatch, fresh_settings):
    monkeypatch.setenv("AUTODIDACT_URL", live_gateway.url)
    monkeypatch.setenv("AUTODIDACT_API_KEY", live_gateway.admin)
    from shared.config import get_settings

    get_settings.cache_clear()
    with Client() as c:
        assert c.url == live_gateway.url and c.base_models()
    from services.cli import app

    result = CliRunner().invoke(app, ["models", "base"])
    assert result.exit_code == 0 and "gemma" in result.output, result.output


# ---------------------------------------------------------------- the CLI
def test_cli_prompt_sets_runs_and_models(live_gateway, client, tiny_model, tmp_path):
    path = tmp_path / "cli.jsonl"
    path.write_text("".join(json.dumps(it) + "\n" for it in ITEMS))
    r = cli(live_gateway, "prompt-sets", "upload", str(path), "--name", "cli-set")
    assert r.exit_code == 0 and "'cli-set': 5 prompts (train)" in r.output, r.output
    set_id = int(r.output.split()[2])
    r = cli(live_gateway, "prompt-sets", "list", "--limit", "3")
    assert r.exit_code == 0 and "cli-set" in r.output
    r = cli(live_gateway, "prompt-sets", "show", str(set_id), "--prompts", "2")
    assert r.exit_code == 0 and "write about the river 1" in r.output and "river 2" not in r.output
    r = cli(live_gateway, "prompt-sets", "export", str(set_id), "--out", str(tmp_path / "e.jsonl"))
    assert r.exit_code == 0 and [json.loads(x) for x in (tmp_path / "e.jsonl").read_text().splitlines()] == ITEMS

    # `autodidact run` without --embedded submits to the gateway (the file uploaded first)
    r = cli(live_gateway, "run", "--method", "spin", "--prompts", str(path), "--model", Path(tiny_model).name,
            "--config", '{"max_new_tokens": 8}')
    assert r.exit_code == 0 and "submitted run" in r.output, r.output
    run_id = int(r.output.split("submitted run ")[1].split()[0])
    r = cli(live_gateway, "run", "--method", "spin", "--prompt-set", str(set_id), "--model", "gemma",
            "--rounds", "0")
    assert r.exit_code == 1 and "rounds: Input should be greater than or equal to 1" in r.output, r.output
    r = cli(live_gateway, "runs", "list")
    assert r.exit_code == 0 and str(run_id) in r.output
    r = cli(live_gateway, "runs", "add-prompt-sets", str(run_id), str(set_id), key=live_gateway.member)
    assert r.exit_code == 1 and "submitted by another key" in r.output  # the server's 403, no traceback
    r = cli(live_gateway, "runs", "cancel", str(run_id))
    assert r.exit_code == 0 and "cancelled" in r.output

    done = stored_run("client-a", set_id, status="succeeded")
    r = cli(live_gateway, "runs", "show", str(done))
    assert r.exit_code == 0 and "0.500 [0.250, 0.750] n=4" in r.output and "succeeded" in r.output, r.output
    r = cli(live_gateway, "runs", "pairs", str(done), "--out", str(tmp_path / "pairs.jsonl"))
    assert r.exit_code == 0 and "wrote 2 pairs" in r.output
    assert json.loads((tmp_path / "pairs.jsonl").read_text().splitlines()[0])["rejected"][0]["content"] == "bad 0"
    r = cli(live_gateway, "runs", "plot", str(done), "--out", str(tmp_path / "run.png"))
    assert r.exit_code == 0 and (tmp_path / "run.png").read_bytes()[:4] == b"\x89PNG"
    r = cli(live_gateway, "runs", "train-steps", str(done), "1")
    assert r.exit_code == 0 and "train_steps (2 steps)" in r.output

    base = next(v for v in client.models() if v.kind == "base")
    r = cli(live_gateway, "models", "list")
    assert r.exit_code == 0 and base.key[:20] in r.output
    r = cli(live_gateway, "models", "show", str(base.id))
    assert r.exit_code == 0 and json.loads(r.output)["key"] == base.key
    r = cli(live_gateway, "models", "promote", str(base.id))
    assert r.exit_code == 0 and f"promoted model version {base.id}" in r.output
    r = cli(live_gateway, "models", "promote", str(base.id), key=live_gateway.member)
    assert r.exit_code == 1 and "403 Forbidden" in r.output and "needs an admin key" in r.output


def test_cli_errors_are_the_servers_message_without_traceback(live_gateway, tmp_path):
    r = cli(live_gateway, "runs", "show", "2000000000")
    assert r.exit_code == 1 and "404 Not Found" in r.output and "run 2000000000 not found" in r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "colour": 1}\n')
    r = cli(live_gateway, "prompt-sets", "upload", str(bad))
    assert r.exit_code == 1 and "file.line 1" in r.output and "colour" in r.output, r.output
    r = cli(live_gateway, "runs", "list", key="adk_nope")
    assert r.exit_code == 1 and "401" in r.output and "unknown API key" in r.output


@pytest.mark.parametrize("status,code", [("succeeded", 0), ("failed", 3), ("stopped", 4), ("cancelled", 5)])
def test_watch_exit_status_follows_the_outcome(live_gateway, client, status, code):
    ps = client.create_prompt_set("watch-set", ITEMS)
    run_id = stored_run("client-a", ps.id, status=status, error="round 1, stage train: boom" if status == "failed" else None)
    r = cli(live_gateway, "runs", "watch", str(run_id), "--interval", "0.05")
    assert r.exit_code == code, r.output
    assert f"run {run_id} {status}" in r.output and "0.250 [0.250, 0.750] n=4" in r.output  # the start's accuracy
    if status == "failed":
        assert "boom" in r.output
