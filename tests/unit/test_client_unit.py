"""The API client's error rendering and retries (against a small hand-written HTTP handler, no
server), and the remote CLI's run view. The client against the real gateway: tests/service/test_client.py."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import httpx
import pytest
from rich.console import Console

from services.cli_remote import progress_line, run_view
from services.client import ApiError, Client
from services.gateway.schemas import RunDetail

NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)


def test_api_error_names_each_field_and_the_request():
    one = ApiError(404, [{"loc": [], "msg": "run 7 not found", "type": "not_found"}], method="GET", url="/v1/runs/7")
    assert str(one) == "404 Not Found (GET /v1/runs/7): run 7 not found" and not one.transient
    many = ApiError(422, [{"loc": ["rounds"], "msg": "too many", "type": "invalid"},
                          {"loc": ["file", "line 2", "prompt"], "msg": "empty", "type": "invalid"}])
    assert str(many) == "422 Unprocessable Entity:\n  - rounds: too many\n  - file.line 2.prompt: empty"
    assert ApiError(None, [{"loc": [], "msg": "down"}]).transient and ApiError(503, []).transient


class Scripted:
    """Answers requests from a list of (status, body) in order and records what it was sent."""

    def __init__(self, *answers):
        self.answers, self.seen = list(answers), []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        status, body = self.answers.pop(0)
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body, headers={"Retry-After": "0"} if status == 503 else {})


PS = {"id": 3, "name": "s", "description": "", "split": "train", "size": 1, "created_at": NOW.isoformat()}


def test_a_create_is_retried_with_the_same_idempotency_key():
    handler = Scripted((503, {"detail": [{"loc": [], "msg": "database unavailable", "type": "unavailable"}]}),
                       (409, {"detail": [{"loc": ["header", "Idempotency-Key"], "msg": "in progress", "type": "conflict"}]}),
                       (201, PS))
    with Client("http://gw", "k", transport=httpx.MockTransport(handler)) as c:
        assert c.create_prompt_set("s", [{"prompt": "p"}]).id == 3
    keys = {r.headers["Idempotency-Key"] for r in handler.seen}
    assert len(handler.seen) == 3 and len(keys) == 1 and handler.seen[0].headers["Authorization"] == "Bearer k"


def test_an_upload_is_resent_whole(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text('{"prompt": "p"}\n')
    handler = Scripted((503, {"detail": [{"loc": [], "msg": "down", "type": "unavailable"}]}), (201, PS))
    with Client("http://gw", "k", transport=httpx.MockTransport(handler)) as c:
        assert c.upload_prompt_set(path, split="heldout").id == 3
    bodies = [r.read() for r in handler.seen]
    assert len(bodies) == 2 and all(b'{"prompt": "p"}\n' in b and b"heldout" in b for b in bodies)


def test_a_cancel_is_not_resent_after_an_answer_and_odd_bodies_still_read():
    handler = Scripted((502, "<html>bad gateway</html>"))
    with Client("http://gw", "k", transport=httpx.MockTransport(handler)) as c, pytest.raises(ApiError) as err:
        c.cancel_run(1)
    assert len(handler.seen) == 1 and err.value.status_code == 502 and "<html>bad gateway</html>" in str(err.value)


def test_pages_are_followed_until_the_last():
    page = lambda ids, nxt: {"items": [{**PS, "id": i} for i in ids], "next_cursor": nxt}
    handler = Scripted((200, page([9, 8], "c8")), (200, page([5], None)))
    with Client("http://gw", "k", transport=httpx.MockTransport(handler)) as c:
        assert [ps.id for ps in c.prompt_sets(page_size=2)] == [9, 8, 5]
    assert handler.seen[1].url.params["cursor"] == "c8" and handler.seen[1].url.params["limit"] == "2"


def _tar(path, *members):
    """A .tar.gz of (name, kind) members: kind "file", "dir", "symlink" (to /etc/passwd)."""
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = 2
                tar.addfile(info, io.BytesIO(b"ok"))
                continue
            info.type = tarfile.DIRTYPE if kind == "dir" else tarfile.SYMTYPE
            info.linkname = "/etc/passwd" if kind == "symlink" else ""
            tar.addfile(info)
    return path


def test_unpack_makes_the_top_directory_dest(tmp_path):
    from services.client import unpack

    archive = _tar(tmp_path / "a.tar.gz", ("model", "dir"), ("model/config.json", "file"), ("model/sub/w.bin", "file"))
    (tmp_path / "out").mkdir()  # an empty directory is fine
    assert unpack(archive, tmp_path / "out") == tmp_path / "out"
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*")) == \
        ["config.json", "sub", "sub/w.bin"]
    with pytest.raises(ValueError, match="not an empty directory"):
        unpack(archive, tmp_path / "out")


@pytest.mark.parametrize("members,why", [
    ([("m/ok", "file"), ("/etc/evil", "file")], "refusing member '/etc/evil'"),
    ([("m/ok", "file"), ("m/../../evil", "file")], "refusing member 'm/../../evil'"),
    ([("m/ok", "file"), ("m/link", "symlink")], "refusing member 'm/link'"),
    ([("a/ok", "file"), ("b/ok", "file")], "one top directory"),
    ([("m", "file")], "is a file"),
])
def test_unpack_refuses_unsafe_archives_before_writing(tmp_path, members, why):
    from services.client import unpack

    with pytest.raises(ValueError, match=why):
        unpack(_tar(tmp_path / "a.tar.gz", *members), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz"]  # no dest, no staging left


EXPORT = {"version_id": 5, "dtype": "auto", "status": "pending", "path": None, "archive_bytes": None,
          "download": None, "error": None}


def test_export_and_download_polls_and_raises_the_workers_error(tmp_path):
    from services.client import ExportFailed

    failed = {**EXPORT, "status": "failed", "error": "CUDA out of memory\n"}
    handler = Scripted((503, {"detail": "queue down"}), (202, EXPORT), (200, EXPORT), (200, failed))
    seen = []
    with Client("http://gw", "k", transport=httpx.MockTransport(handler)) as c, pytest.raises(ExportFailed) as err:
        c.export_model_and_download(5, tmp_path / "m", interval=0, on_status=lambda st: seen.append(st.status))
    assert [r.method for r in handler.seen] == ["POST", "POST", "GET", "GET"] and seen == ["pending", "pending", "failed"]
    assert err.value.message == "the export of version 5 in auto failed: CUDA out of memory (GET /v1/models/5/export?dtype=auto)"
    assert not err.value.transient and not (tmp_path / "m").exists()
    assert "Idempotency-Key" not in handler.seen[0].headers and json.loads(handler.seen[0].read()) == {"dtype": "auto"}


def _run(**over) -> RunDetail:
    over = {"status": "running", "error": None, "finished_at": None, **over}
    stages = {"generate": {"status": "succeeded", "seconds": 4.0, "shards": 2, "shards_done": 2},
              "verify": {"status": "running", "shards": 8, "shards_done": 3}}
    rnd = {"number": 1, "status": "running", "stages": stages, "policy_version_id": 1, "produced_version_id": None,
           "created_at": NOW, "finished_at": None,
           "metrics": {"eval_base": {"prompt_strict_acc": 0.25, "n": 60, "ci95": {"prompt_strict_acc": [0.15, 0.36]}}}}
    return RunDetail(id=4, method="rest_em", base_model="gemma-chat", prompt_set_ids=[1], eval_prompt_set_ids=[2],
                     rounds=2, config={}, continuous=False, stopping={}, created_at=NOW, round_details=[rnd], **over)


def test_the_run_view_shows_stages_progress_and_intervals():
    console = Console(record=True, width=160)
    console.print(run_view(_run(), note="gateway not answering"))
    text = console.export_text()
    assert "run 4 · rest_em · gemma-chat · running · round 1/2" in text
    assert "✓ generate 4s" in text and "● verify" in text and "3/8" in text
    assert "0.250 [0.150, 0.360] n=60" in text and "gateway not answering" in text
    assert progress_line(_run()) == "run 4 running · round 1 running · verify running 3/8"
    assert "its start" not in text
    # Self-Rewarding's round 1 evaluates M1, the policy it made itself, apart from the start
    run = _run()
    run.round_details[0].metrics["eval_policy"] = {"prompt_strict_acc": 0.2, "n": 60,
                                                   "ci95": {"prompt_strict_acc": [0.1, 0.3]}}
    console = Console(record=True, width=160)
    console.print(run_view(run))
    text = console.export_text()
    assert "1: its start" in text and "0.200 [0.100, 0.300] n=60" in text


class FakeApi:
    """Answers `run()` from a script: RunDetails, or ApiErrors to raise."""

    def __init__(self, *answers):
        self.answers = list(answers)

    def run(self, run_id):
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.mark.parametrize("terminal", [True, False])
def test_watch_redraws_through_an_outage_until_the_run_ends(terminal):
    import io

    from services.cli_remote import watch_run

    done = _run(status="failed", error="round 1, stage verify: boom", finished_at=NOW)
    fake = FakeApi(_run(), ApiError(None, [{"loc": [], "msg": "connection refused"}]), _run(), done)
    out = Console(file=io.StringIO(), force_terminal=terminal, color_system=None, width=160)
    assert watch_run(fake, 4, 0.01, out=out) == 3  # failed
    text = out.file.getvalue()
    assert "run 4 failed: round 1, stage verify: boom" in text
    assert ("run 4 running · round 1 running · verify running 3/8" in text) is not terminal  # lines only off a terminal
    with pytest.raises(ApiError):  # an error that is not an outage ends the watch (the CLI prints it, exit 1)
        watch_run(FakeApi(_run(), ApiError(404, [{"loc": [], "msg": "run 4 not found"}])), 4, 0.01, out=out)
