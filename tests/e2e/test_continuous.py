"""Continuous mode through the API with real workers: a prompt set added mid-run joins from the
next round, the run stops by its rule, and the best version is promoted."""
from __future__ import annotations

from sqlmodel import select

from shared.db import session_scope
from shared.models import Prompt, Round, Sample
from tests.conftest import wait_for
from tests.e2e.helpers import submit, upload, wait_run


def test_continuous_run_picks_up_a_new_prompt_set_and_stops_by_rule(api, workers, tiny_model):
    client, a, _ = api
    first = upload(client, a, [{"prompt": f"say {i}", "reference": f"{i} ."} for i in range(4)], name="cont-a")
    later = upload(client, a, [{"prompt": f"shout {i}", "reference": f"{i} !"} for i in range(2)], name="cont-b")
    run_id = submit(client, a, method="spin", base_model=tiny_model, prompt_set_ids=[first], rounds=1,
                    continuous=True, stopping={"max_rounds": 3},
                    config={"max_new_tokens": 8, "learning_rate": 1e-3, "epochs": 1, "lora_r": 4})

    def round1_planned():
        stages = client.get(f"/v1/runs/{run_id}", headers=a).json()["round_details"][0]["stages"]
        return "generate" in stages

    def rounds_so_far():
        return len(client.get(f"/v1/runs/{run_id}", headers=a).json()["round_details"])

    wait_for(round1_planned, timeout=60, interval=0.2, what="round 1 to be planned")
    r = client.post(f"/v1/runs/{run_id}/prompt-sets", headers=a, json={"prompt_set_ids": [later]})
    assert r.status_code == 200 and r.json()["prompt_set_ids"] == [first, later]
    # Rounds opened after this point plan with the new set. On a loaded machine round 2 may open
    # between round 1's planning and the request above (a tiny round takes seconds); then it is
    # round 3 that must carry the set.
    opened = rounds_so_far()
    bad = client.post(f"/v1/runs/{run_id}/prompt-sets", headers=a, json={"prompt_set_ids": [10**9]})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["prompt_set_ids", 0]

    run = wait_run(client, a, run_id, workers)
    assert [rnd["number"] for rnd in run["round_details"]] == [1, 2, 3]  # max_rounds stopped it
    with session_scope() as s:
        later_ids = set(s.exec(select(Prompt.id).where(Prompt.prompt_set_id == later)).all())
        per_round = {}
        for number in (1, 2, 3):
            rnd = s.exec(select(Round).where(Round.run_id == run_id, Round.number == number)).one()
            per_round[number] = set(s.exec(select(Sample.prompt_id).where(Sample.round_id == rnd.id)).all())
    assert not per_round[1] & later_ids  # round 1 was planned before the set was added
    assert opened < 3, "the run reached its last round before the set was added; nothing to check"
    for number in range(opened + 1, 4):
        assert later_ids <= per_round[number], number
    promoted = [m for m in client.get("/v1/models", headers=a).json()["items"] if m["run_id"] == run_id and m["promoted"]]
    assert len(promoted) == 1 and promoted[0]["round_number"] == 3  # not evaluated: the last one
    # promoting by hand moves the mark
    first_version = run["round_details"][0]["produced_version_id"]
    assert client.post(f"/v1/models/{first_version}/promote", headers=a).json()["promoted"] is True
    marks = {m["id"]: m["promoted"] for m in client.get("/v1/models", headers=a).json()["items"] if m["run_id"] == run_id}
    assert marks[first_version] and sum(marks.values()) == 1
    assert client.post(f"/v1/runs/{run_id}/prompt-sets", headers=a, json={"prompt_set_ids": [later]}).status_code == 409
