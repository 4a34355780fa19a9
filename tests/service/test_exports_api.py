"""Exports and imports through the gateway on the real Postgres (and a real training worker for the
model merge), and the same through the CLI on the local database."""
from __future__ import annotations

import io
import json
import tarfile

import pytest

from tests.conftest import Workers, wait_for
from tests.unit.test_model_export import make_adapter

ITEMS = [{"prompt": "Say hi.", "reference": "Hi!"},
         {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count to 3."}],
          "reference": "1, 2, 3.", "answer": "3"},
         {"prompt": "Lowercase please.", "constraints": [{"id": "change_case:english_lowercase", "kwargs": {}}],
          "topic": "style"}]
EVAL = {"n": 30, "prompt_strict_acc": 0.4, "prompt_loose_acc": 0.5, "instruction_strict_acc": 0.55,
        "instruction_loose_acc": 0.6, "ci95": {"prompt_strict_acc": [0.233, 0.567]}}


def _set(client, h, items=ITEMS, name="exports"):
    r = client.post("/v1/prompt-sets", json={"name": name, "items": items}, headers=h)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _upload(client, h, data: bytes, maps=(), name="imported"):
    form = {"name": name, **({"map": list(maps)} if maps else {})}
    return client.post("/v1/prompt-sets", headers=h, data=form,
                       files={"file": ("p.parquet", io.BytesIO(data), "application/vnd.apache.parquet")})


def _jsonl(client, h, set_id):
    r = client.get(f"/v1/prompt-sets/{set_id}/export", headers=h)
    return [json.loads(line) for line in r.text.splitlines()]


def _untar(data: bytes, dest):
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
        return dest / tar.getnames()[0].split("/")[0]


def test_prompt_set_round_trips_through_parquet_upload(api):
    client, a, b = api
    sid = _set(client, a)
    r = client.get(f"/v1/prompt-sets/{sid}/export?format=parquet", headers=a)
    assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.apache.parquet"
    again = _upload(client, a, r.content)
    assert again.status_code == 201, again.text
    assert _jsonl(client, a, again.json()["id"]) == ITEMS
    assert client.get(f"/v1/prompt-sets/{sid}/export?format=parquet", headers=b).status_code == 404


def test_prompt_set_round_trips_through_a_datasets_directory(api, tmp_path):
    import datasets

    client, a, _ = api
    sid = _set(client, a)
    r = client.get(f"/v1/prompt-sets/{sid}/export?format=hf", headers=a)
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    ds = datasets.load_from_disk(str(_untar(r.content, tmp_path)))
    assert ds.column_names == ["prompt", "reference", "constraints", "answer", "topic"] and len(ds) == 3
    ds.to_parquet(tmp_path / "again.parquet")
    again = _upload(client, a, (tmp_path / "again.parquet").read_bytes())
    assert again.status_code == 201, again.text
    assert _jsonl(client, a, again.json()["id"]) == ITEMS


def _parquet_bytes(columns: dict) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def test_parquet_upload_with_a_column_map(api):
    client, a, _ = api
    data = _parquet_bytes({"instruction": ["Write a poem.", "Name a fruit."], "output": ["Roses.", "Apple."],
                           "id": [1, 2]})
    r = _upload(client, a, data, maps=["prompt=instruction", "reference=output"])
    assert r.status_code == 201, r.text
    assert _jsonl(client, a, r.json()["id"]) == [{"prompt": "Write a poem.", "reference": "Roses."},
                                                 {"prompt": "Name a fruit.", "reference": "Apple."}]
    one_field = _upload(client, a, data, maps=["prompt=instruction,reference=output"])
    assert one_field.status_code == 201, one_field.text


@pytest.mark.parametrize("columns,maps,loc,text", [
    ({"instruction": ["x"]}, [], ["map", "prompt"], "no 'prompt' column"),
    ({"instruction": ["x"]}, ["prompt=instr"], ["map", "prompt"], "no column 'instr'"),
    ({"prompt": ["x"]}, ["colour=prompt"], ["map", "colour"], "unknown prompt field"),
    ({"prompt": ["ok", ""]}, [], ["file", "row 1", "prompt"], "empty"),
    ({"prompt": ["ok"], "constraints": ['[{"id": "no:such"}]']}, [], ["file", "row 0", "constraints"], "no:such"),
])
def test_parquet_upload_errors_name_the_column_or_row(api, columns, maps, loc, text):
    client, a, _ = api
    before = len(client.get("/v1/prompt-sets", headers=a).json()["items"])
    r = _upload(client, a, _parquet_bytes(columns), maps=maps)
    assert r.status_code == 422, r.text
    assert any(e["loc"] == loc and text in e["msg"] for e in r.json()["detail"]), r.json()
    assert len(client.get("/v1/prompt-sets", headers=a).json()["items"]) == before


def test_broken_parquet_and_map_on_jsonl_are_422(api):
    client, a, _ = api
    r = _upload(client, a, b"PAR1 but not really")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["file"]
    r = client.post("/v1/prompt-sets", headers=a, data={"name": "j", "map": "prompt=x"},
                    files={"file": ("p.jsonl", io.BytesIO(b'{"prompt": "hi"}\n'), "application/jsonl")})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["map"]


@pytest.fixture(scope="module")
def finished_run(api, tiny_model, tmp_path_factory):
    """A finished SPIN run written straight into the database (no workers): two rounds of pairs,
    held-out metrics, and an adapter version (round 2) with a real LoRA adapter of the tiny model."""
    from shared.db import session_scope
    from shared.models import Workspace
    from sqlmodel import select

    client, a, _ = api
    sid = _set(client, a, items=[{"prompt": "Say hi.", "reference": "Hi!"},
                                 {"prompt": [{"role": "system", "content": "Brief."},
                                             {"role": "user", "content": "Count."}], "reference": "1 2 3"}])
    adapter = make_adapter(tiny_model, tmp_path_factory.mktemp("adapter") / "a")
    with session_scope() as s:
        ws = s.exec(select(Workspace).where(Workspace.name == "ws-a")).one()
        return seed_finished_run(s, ws.id, tiny_model, sid, adapter, {"examples": 2, "loss": 0.5})


def seed_finished_run(s, workspace_id: int, tiny_model: str, set_id: int, adapter: str, version_metrics: dict,
                      extra_versions: tuple = ()) -> dict:
    """A succeeded two-round SPIN run on prompt set `set_id`: pairs and held-out metrics in both
    rounds, round 2's adapter version at `adapter`, plus `extra_versions` {round: uri}; returns ids."""
    from shared import crud
    from shared.models import ModelVersion, Round, Run

    run = Run(workspace_id=workspace_id, method="spin", base_model=tiny_model, prompt_set_ids=[set_id], rounds=2,
              config={"beta": 0.1}, status="succeeded", eval_prompt_set_ids=[])
    s.add(run)
    s.flush()
    prompts = crud.prompts_of_set(s, prompt_set_id=set_id)
    base = crud.base_version(s, workspace_id=workspace_id, base_model=tiny_model)
    version = ModelVersion(workspace_id=workspace_id, key=f"run:{run.id}:round:2:policy", run_id=run.id,
                           round_number=2, kind="adapter", base_model=tiny_model, uri=adapter, metrics=version_metrics)
    extra = [ModelVersion(workspace_id=workspace_id, key=f"run:{run.id}:round:{n}:policy", run_id=run.id,
                          round_number=n, kind="adapter", base_model=tiny_model, uri=uri) for n, uri in extra_versions]
    s.add_all([version, *extra])
    s.flush()
    for n in (1, 2):
        rnd = Round(run_id=run.id, number=n, status="succeeded", produced_version_id=version.id if n == 2 else None,
                    metrics={"eval": {**EVAL, "prompt_strict_acc": 0.4 + n / 10}, **({"eval_base": EVAL} if n == 1 else {})})
        s.add(rnd)
        s.flush()
        crud.upsert_pairs(s, rows=[{"round_id": rnd.id, "prompt_id": p.id, "index": 0, "source": "gold_vs_generated",
                                    "chosen": p.reference, "rejected": f"nope {n}", "margin": None if n == 1 else 1.5}
                                   for p in prompts])
    return {"run": run.id, "version": version.id, "base": base.id, **{f"round{n}": v.id for (n, _), v in
                                                                    zip(extra_versions, extra)}}


def test_pairs_as_parquet_and_datasets_directory(api, finished_run, tmp_path):
    import datasets

    client, a, b = api
    run = finished_run["run"]
    r = client.get(f"/v1/runs/{run}/pairs?format=parquet", headers=a)
    assert r.status_code == 200, r.text
    (tmp_path / "p.parquet").write_bytes(r.content)
    ds = datasets.Dataset.from_parquet(str(tmp_path / "p.parquet"))
    assert ds.column_names == ["prompt", "chosen", "rejected", "round", "source", "margin"]
    assert ds["round"] == [1, 1, 2, 2] and ds["margin"] == [None, None, 1.5, 1.5]
    assert ds[0]["chosen"] == [{"role": "assistant", "content": "Hi!"}] and ds[1]["prompt"][0]["role"] == "system"
    r = client.get(f"/v1/runs/{run}/pairs?format=hf&round=2", headers=a)
    assert r.status_code == 200, r.text
    ds2 = datasets.load_from_disk(str(_untar(r.content, tmp_path / "hf")))
    assert ds2["round"] == [2, 2] and ds2[0]["rejected"] == [{"role": "assistant", "content": "nope 2"}]
    jsonl = client.get(f"/v1/runs/{run}/pairs?round=1", headers=a).text.splitlines()
    assert {"prompt", "chosen", "rejected"} <= set(json.loads(jsonl[0])) and len(jsonl) == 2
    # The standard (plain text) style refuses chat prompts, naming the parameter; hf of no pairs is a 409.
    r = client.get(f"/v1/runs/{run}/pairs?format=parquet&style=standard", headers=a)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "style"]
    assert client.get(f"/v1/runs/{run}/pairs?format=hf&round=9", headers=a).status_code == 409
    assert client.get(f"/v1/runs/{run}/pairs?format=parquet", headers=b).status_code == 404


@pytest.fixture(scope="module")
def training_worker(services_env, tmp_path_factory):
    w = Workers(services_env, tmp_path_factory.mktemp("export-worker-logs"))
    w.start("training")
    yield w
    w.stop_all()


def test_model_export_on_the_training_queue(api, finished_run, training_worker, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shared.db import session_scope
    from shared.models import ModelVersion

    client, a, b = api
    vid = finished_run["version"]
    assert client.get(f"/v1/models/{vid}/export", headers=a).json()["status"] == "absent"
    assert client.get(f"/v1/models/{vid}/export/archive", headers=a).status_code == 409
    assert client.post(f"/v1/models/{finished_run['base']}/export", headers=a, json={}).status_code == 409
    assert client.post(f"/v1/models/{vid}/export", headers=b, json={}).status_code == 404
    assert client.post(f"/v1/models/{vid}/export", headers=a, json={"dtype": "int8"}).status_code == 422
    r = client.post(f"/v1/models/{vid}/export", headers=a, json={"dtype": "float32"})
    assert r.status_code == 202 and r.json()["status"] == "pending", r.text

    def ready():
        st = client.get(f"/v1/models/{vid}/export?dtype=float32", headers=a).json()
        assert st["status"] != "failed", st["error"]
        return st if st["status"] == "ready" else None

    st = wait_for(ready, timeout=180, interval=1, what="the export")  # the worker starts cold
    assert client.post(f"/v1/models/{vid}/export", headers=a, json={"dtype": "float32"}).status_code == 200
    r = client.get(st["download"], headers=a)
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    assert int(r.headers["content-length"]) == st["archive_bytes"]
    out = _untar(r.content, tmp_path)
    assert out.name == f"autodidact-v{vid}"
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    with session_scope() as s:
        v = s.get(ModelVersion, vid)
        base_model, adapter = v.base_model, v.uri
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32), adapter).eval()
    ids = tok("the quick brown fox", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, ref(ids).logits, atol=1e-4)
    card = (out / "README.md").read_text()
    assert "spin" in card and "| start (base) | 30 | 0.400 [0.233, 0.567]" in card
    assert "| 2 ← this version | 30 | 0.600 [0.233, 0.567]" in card


def test_cli_exports_and_imports_on_the_local_database(api, finished_run, tmp_path):
    import datasets
    from typer.testing import CliRunner

    from services.cli import app

    client, a, _ = api
    runner = CliRunner()
    run = finished_run["run"]
    r = runner.invoke(app, ["export", "pairs", str(run), str(tmp_path / "pairs"), "--round", "2"])
    assert r.exit_code == 0, r.output
    assert datasets.load_from_disk(str(tmp_path / "pairs"))["round"] == [2, 2]
    r = runner.invoke(app, ["export", "model", str(finished_run["version"]), str(tmp_path / "model"), "--dtype", "float32"])
    assert r.exit_code == 0, r.output
    assert "spin" in (tmp_path / "model" / "README.md").read_text()
    r = runner.invoke(app, ["export", "model", str(finished_run["base"]), str(tmp_path / "m2")])
    assert r.exit_code == 2 and "nothing to merge" in r.output
    sid = _set(client, a)
    r = runner.invoke(app, ["export", "prompts", str(sid), str(tmp_path / "ps")])
    assert r.exit_code == 0, r.output
    ds = datasets.load_from_disk(str(tmp_path / "ps")).rename_column("prompt", "question")
    ds.save_to_disk(str(tmp_path / "renamed"))
    r = runner.invoke(app, ["import", "prompts", str(tmp_path / "renamed"), "--workspace", "ws-a", "--name", "back",
                            "--map", "prompt=question"])
    assert r.exit_code == 0, r.output
    new_id = int(r.output.split()[2].rstrip(":"))
    assert _jsonl(client, a, new_id) == ITEMS
    r = runner.invoke(app, ["import", "prompts", str(tmp_path / "renamed"), "--workspace", "ws-a"])
    assert r.exit_code == 2 and "prompt" in r.output
