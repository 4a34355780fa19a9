"""The export endpoints through the API client and the remote CLI, against a real gateway process
(tests/gateway_process.py) and a real training worker for the model merge: Parquet prompt sets
both ways (a column map on the way in), pairs as Parquet and as a `datasets` directory, and a model
version exported, downloaded and unpacked into a directory `from_pretrained` loads. The endpoints
themselves (every status code and column): tests/service/test_exports_api.py.
"""
from __future__ import annotations

import json
import tarfile

import pytest

from services.client import ApiError, Client, ExportFailed
from tests.conftest import Workers
from tests.service.test_client import cli
from tests.service.test_exports_api import seed_finished_run
from tests.unit.test_model_export import make_adapter

ITEMS = [{"prompt": "Say hi.", "reference": "Hi!"},
         {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count to 3."}],
          "reference": "1, 2, 3.", "answer": "3"},
         {"prompt": "Lowercase please.", "constraints": [{"id": "change_case:english_lowercase", "kwargs": {}}],
          "topic": "style"}]
PLAIN = [{"prompt": "Name a river.", "reference": "The Nile."}, {"prompt": "Name a fruit.", "reference": "Apple."}]


@pytest.fixture
def client(live_gateway):
    with Client(live_gateway.url, live_gateway.admin) as c:
        yield c


@pytest.fixture(scope="module")
def finished(live_gateway, tiny_model, tmp_path_factory):
    """A finished SPIN run of workspace client-a written to the database (no workers): two rounds
    of pairs, an adapter version (round 2) with a real LoRA adapter of the tiny model, one whose
    adapter is missing (its export fails), and the base version."""
    from shared import crud
    from shared.db import session_scope

    with Client(live_gateway.url, live_gateway.admin) as c:
        sid = c.create_prompt_set("pairs-source", ITEMS[:2]).id
    adapter = make_adapter(tiny_model, tmp_path_factory.mktemp("adapter") / "a")
    with session_scope() as s:
        ws = crud.get_or_create_workspace(s, name="client-a")
        ids = seed_finished_run(s, ws.id, tiny_model, sid, adapter, {"examples": 2},
                                extra_versions=((1, str(tmp_path_factory.mktemp("gone") / "none")),))
    return {**ids, "lost": ids["round1"]}


@pytest.fixture(scope="module")
def training_worker(services_env, tmp_path_factory):
    w = Workers(services_env, tmp_path_factory.mktemp("client-export-worker-logs"))
    w.start("training")
    yield w
    w.stop_all()


def _parquet(path, columns: dict):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


# ---------------------------------------------------------------- the client
def test_prompt_sets_round_trip_through_parquet_and_a_column_map(client, tmp_path):
    import datasets

    sid = client.create_prompt_set("parquet-source", ITEMS).id
    got = client.download_prompt_set(sid, tmp_path / "set.parquet", format="parquet")
    assert got.size == (tmp_path / "set.parquet").stat().st_size > 0 and got.lines == 0
    again = client.upload_prompt_set(got.path, name="parquet-again")
    assert (again.name, again.size) == ("parquet-again", 3) and list(client.export_prompt_set(again.id)) == ITEMS

    ds = datasets.load_from_disk(str(client.download_prompt_set(sid, tmp_path / "hf", format="hf").path))
    assert ds.column_names == ["prompt", "reference", "constraints", "answer", "topic"] and len(ds) == 3

    renamed = _parquet(tmp_path / "alpaca.parquet", {"instruction": [i["prompt"] for i in PLAIN],
                                                     "output": [i["reference"] for i in PLAIN], "id": [1, 2]})
    mapped = client.upload_prompt_set(renamed, map={"prompt": "instruction", "reference": "output"}, split="heldout")
    assert mapped.split == "heldout" and list(client.export_prompt_set(mapped.id)) == PLAIN
    got = client.download_prompt_set(mapped.id, tmp_path / "plain.parquet", format="parquet", style="standard")
    assert datasets.Dataset.from_parquet(str(got.path))["prompt"] == ["Name a river.", "Name a fruit."]

    with pytest.raises(ApiError) as err:  # the server's 422 names the field and the column it lacks
        client.upload_prompt_set(renamed, map={"prompt": "instr"})
    assert err.value.status_code == 422 and "map.prompt: no column 'instr'" in str(err.value)
    jsonl = tmp_path / "set.jsonl"
    jsonl.write_text('{"prompt": "hi"}\n')
    with pytest.raises(ApiError) as err:
        client.upload_prompt_set(jsonl, map={"prompt": "question"})
    assert err.value.status_code == 422 and err.value.errors[0]["loc"] == ["map"]
    with pytest.raises(ApiError) as err:  # plain text cannot hold the chat prompt of item 2
        client.download_prompt_set(sid, tmp_path / "std.parquet", format="parquet", style="standard")
    assert err.value.errors[0]["loc"] == ["query", "style"] and not (tmp_path / "std.parquet").exists()
    with pytest.raises(ValueError, match="choose one of jsonl, parquet, hf"):
        client.download_prompt_set(sid, tmp_path / "x", format="csv")


def test_pairs_as_parquet_and_a_datasets_directory(client, finished, tmp_path):
    import datasets

    run = finished["run"]
    got = client.download_pairs(run, tmp_path / "pairs.parquet", format="parquet")
    ds = datasets.Dataset.from_parquet(str(got.path))
    assert ds.column_names == ["prompt", "chosen", "rejected", "round", "source", "margin"]
    assert ds["round"] == [1, 1, 2, 2] and ds["margin"] == [None, None, 1.5, 1.5]
    got = client.download_pairs(run, tmp_path / "hf", round_number=2, format="hf")
    ds2 = datasets.load_from_disk(str(got.path))
    assert got.path == tmp_path / "hf" and ds2["round"] == [2, 2]
    assert ds2[0]["rejected"] == [{"role": "assistant", "content": "nope 2"}]
    assert not list(tmp_path.glob(".*"))  # the archive and the staging directory are gone
    assert client.download_pairs(run, tmp_path / "p.jsonl", round_number=1).lines == 2  # the default, as before
    with pytest.raises(ApiError) as err:
        client.download_pairs(run, tmp_path / "none", round_number=9, format="hf")
    assert err.value.status_code == 409 and "no pairs yet" in err.value.message and not (tmp_path / "none").exists()
    with pytest.raises(ValueError, match="not an empty directory"):  # refused before anything is asked
        client.download_pairs(run, tmp_path / "hf", format="hf")


def test_model_export_through_the_client(client, finished, training_worker, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    vid = finished["version"]
    assert client.model_export(vid, dtype="float32").status == "absent"
    with pytest.raises(ApiError) as err:
        client.download_model_export(vid, tmp_path / "early.tar.gz", dtype="float32")
    assert err.value.status_code == 409 and "POST /v1/models/{id}/export" in err.value.message
    with pytest.raises(ApiError) as err:
        client.export_model(finished["base"])
    assert err.value.status_code == 409 and "nothing to merge" in str(err.value)

    seen = []
    out = client.export_model_and_download(vid, tmp_path / "model", dtype="float32", timeout=300, interval=0.5,
                                           on_status=lambda st: seen.append(st.status))
    assert out == tmp_path / "model" and seen[0] == "pending" and seen[-1] == "ready", seen  # the worker starts cold
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert AutoTokenizer.from_pretrained(str(out))("hi")["input_ids"] and next(model.parameters()).dtype.is_floating_point
    assert "spin" in (out / "README.md").read_text() and (out / "autodidact.json").exists()

    st = client.export_model(vid, dtype="float32")  # done before: ready at once
    assert st.status == "ready" and st.download.endswith("dtype=float32") and client.model_export(vid, dtype="float32") == st
    got = client.download_model_export(vid, tmp_path / "m.tar.gz", dtype="float32")
    assert got.size == st.archive_bytes
    with tarfile.open(got.path) as tar:
        assert {n.split("/")[0] for n in tar.getnames()} == {f"autodidact-v{vid}"}


def test_a_failed_export_raises_the_workers_error(client, finished, training_worker, tmp_path):
    with pytest.raises(ExportFailed) as err:
        client.export_model_and_download(finished["lost"], tmp_path / "m", timeout=300, interval=0.5)
    assert err.value.export.status == "failed" and "is not in the artifact store" in err.value.message
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------- the CLI
def test_cli_parquet_upload_and_exports(live_gateway, client, finished, tmp_path):
    import datasets

    data = _parquet(tmp_path / "alpaca.parquet", {"instruction": [i["prompt"] for i in PLAIN],
                                                  "output": [i["reference"] for i in PLAIN]})
    r = cli(live_gateway, "prompt-sets", "upload", str(data), "--map", "prompt=instruction", "--map", "reference=output")
    assert r.exit_code == 0 and "'alpaca.parquet': 2 prompts (train)" in r.output, r.output
    set_id = int(r.output.split()[2])
    assert list(client.export_prompt_set(set_id)) == PLAIN
    r = cli(live_gateway, "prompt-sets", "upload", str(data), "--map", "prompt")
    assert r.exit_code == 2 and "field=column" in r.output
    r = cli(live_gateway, "prompt-sets", "upload", str(data))  # no column named prompt: the server's 422
    assert r.exit_code == 1 and "map.prompt" in r.output and "no 'prompt' column" in r.output, r.output

    r = cli(live_gateway, "prompt-sets", "export", str(set_id), str(tmp_path / "set.parquet"), "--style", "standard")
    assert r.exit_code == 0 and "Parquet" in r.output, r.output  # the format from the suffix
    assert datasets.Dataset.from_parquet(str(tmp_path / "set.parquet"))["reference"] == ["The Nile.", "Apple."]
    r = cli(live_gateway, "prompt-sets", "export", str(set_id), str(tmp_path / "set"), "--format", "hf")
    assert r.exit_code == 0 and len(datasets.load_from_disk(str(tmp_path / "set"))) == 2, r.output
    r = cli(live_gateway, "prompt-sets", "export", str(set_id), str(tmp_path / "set"), "--format", "hf")
    assert r.exit_code == 2 and "exists" in r.output

    run = finished["run"]
    r = cli(live_gateway, "runs", "pairs", str(run), "--out", str(tmp_path / "pairs"), "--format", "hf", "--round", "2")
    assert r.exit_code == 0 and "datasets directory" in r.output, r.output
    assert datasets.load_from_disk(str(tmp_path / "pairs"))["round"] == [2, 2]
    r = cli(live_gateway, "runs", "pairs", str(run), "--out", str(tmp_path / "p.parquet"), "--style", "standard")
    assert r.exit_code == 1 and "query.style" in r.output, r.output  # chat prompts: the server's message
    r = cli(live_gateway, "runs", "pairs", str(run), "--out", str(tmp_path / "p.jsonl"), "--round", "1")
    assert r.exit_code == 0 and "wrote 2 pairs" in r.output
    assert json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])["round"] == 1


def test_cli_model_export(live_gateway, finished, training_worker, tmp_path):
    from transformers import AutoConfig

    r = cli(live_gateway, "models", "export", str(finished["version"]), str(tmp_path / "model"),
            "--dtype", "float32", "--timeout", "300", "--interval", "0.5")
    assert r.exit_code == 0 and "wrote" in r.output and "from_pretrained" in r.output, r.output
    assert AutoConfig.from_pretrained(str(tmp_path / "model")).model_type
    r = cli(live_gateway, "models", "export", str(finished["base"]), str(tmp_path / "base"))
    assert r.exit_code == 1 and "409 Conflict" in r.output and "nothing to merge" in r.output, r.output
    r = cli(live_gateway, "models", "export", str(finished["lost"]), str(tmp_path / "lost"), "--interval", "0.2")
    assert r.exit_code == 1 and "failed" in r.output and "is not in the artifact store" in r.output, r.output
    r = cli(live_gateway, "models", "export", str(finished["version"]), str(tmp_path / "model"))
    assert r.exit_code == 2 and "not empty" in r.output
