"""The judge-agreement report on hand-written judges: a judge that tracks the verifier scores 1.0,
one that always gives the same score sits at the coin-flip 0.5, unparsed votes are counted."""
from __future__ import annotations

import pytest

from services.generation.base import Completion, ModelRef
from services.judging.agreement import judge_agreement

ITEMS = [{"prompt": f"describe item {i} without commas", "reference": f"item {i} is round and red",
          "constraints": [{"id": "punctuation:no_comma", "kwargs": {}}]} for i in range(3)]


class FakeJudge:
    """Policy answers contain a comma (fail); the judge's behaviour is set by `mode`."""

    def __init__(self, mode: str):
        self.mode = mode

    def _answer(self, text: str) -> str:
        response = text.split("<response>")[-1].split("</response>")[0]
        ok = "," not in response
        if "additive 5-point scale" in text:
            return {"good": f"Score: {5 if ok else 1}", "flat": "Score: 3", "mute": "no idea"}[self.mode]
        if "Verdict: yes" in text:
            return {"good": f"Verdict: {'yes' if ok else 'no'}", "flat": "Verdict: yes", "mute": "hmm"}[self.mode]
        return "well, it depends"

    def generate(self, prompts, model, params):
        return [[Completion(self._answer(p[-1]["content"]), 3, "stop") for _ in range(params.n)] for p in prompts]


@pytest.mark.parametrize("mode,rubric_acc,refiner_acc,unparsed", [
    ("good", 1.0, 1.0, 0),
    ("flat", 0.5, 1 / 3, 0),
    ("mute", None, None, 2 * 9 * 3),
])
def test_agreement(mode, rubric_acc, refiner_acc, unparsed):
    report = judge_agreement(ITEMS, backend=FakeJudge(mode), model=ModelRef("m"), samples_per_prompt=2, votes=3)
    assert report["responses"] == 9 and report["passing"] == 3
    assert report["rubric"]["accuracy"] == rubric_acc
    assert report["refiner"]["accuracy"] == (pytest.approx(refiner_acc) if refiner_acc else None)
    assert sum(report["unparsed"].values()) == unparsed


@pytest.mark.parametrize("mode,balanced,parseable", [("good", 1.0, 1.0), ("flat", 0.5, 1.0), ("mute", None, 0.0)])
def test_balanced_accuracy_parseable_rate_and_types(mode, balanced, parseable):
    report = judge_agreement(ITEMS, backend=FakeJudge(mode), model=ModelRef("m"), samples_per_prompt=2, votes=3)
    assert report["refiner"]["balanced_accuracy"] == balanced  # "always yes" is a coin, not 1/3 or 1
    assert report["parseable"] == {"rubric": parseable, "refiner": parseable}
    per = report["by_type"]["punctuation:no_comma"]
    assert per["refiner"]["n"] == 9 and per["rubric"]["accuracy"] == report["rubric"]["accuracy"]


def test_the_answer_model_writes_the_probe_answers_and_the_model_judges_them():
    class Recording(FakeJudge):
        calls: list = []

        def generate(self, prompts, model, params):
            judging = "<response>" in prompts[0][-1]["content"]
            self.calls.append(("judge" if judging else "answer", model.adapter_path))
            return super().generate(prompts, model, params)

    fake = Recording("good")
    judge_agreement(ITEMS, backend=fake, model=ModelRef("m", "judge-adapter"), answer_model=ModelRef("m", "policy"),
                    judges=("rubric",))
    assert fake.calls == [("answer", "policy"), ("judge", "judge-adapter")]
    fake.calls.clear()
    judge_agreement(ITEMS, backend=fake, model=ModelRef("m", "judge-adapter"), judges=("rubric",))
    assert fake.calls == [("answer", "judge-adapter"), ("judge", "judge-adapter")]  # the judge answers too


def test_only_the_asked_judge_is_queried():
    report = judge_agreement(ITEMS, backend=FakeJudge("good"), model=ModelRef("m"), judges=("refiner",))
    assert report["parseable"]["rubric"] is None and report["refiner"]["balanced_accuracy"] == 1.0
    assert report["rubric"]["pairs"] == 0


@pytest.mark.parametrize("mode,rubric_ci,refiner_ci", [
    ("good", [1.0, 1.0], [1.0, 1.0]),   # right on every prompt: no resample can say otherwise
    ("flat", [0.5, 0.5], [0.5, 0.5]),   # always the same answer: a coin on every resample
    ("mute", None, None),               # nothing decided, nothing to put an interval on
])
def test_judge_accuracies_carry_an_interval_over_prompts(mode, rubric_ci, refiner_ci):
    report = judge_agreement(ITEMS, backend=FakeJudge(mode), model=ModelRef("m"), samples_per_prompt=2, votes=3)
    assert report["rubric"]["ci95"] == rubric_ci and report["refiner"]["balanced_ci95"] == refiner_ci
