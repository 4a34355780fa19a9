"""SPaR-hybrid's mechanical fixes: the verified minimal programmatic edit of a failed answer, used
in place of the refiner's rewrites (refinement tasks) and to tell the two apart afterwards (the
round's `solved_by_fix`). Pure: no database, queue or model."""
from __future__ import annotations


def mechanical_fix(prompt: dict, text: str) -> str | None:
    """The verified minimal programmatic fix of `text` for a prompt with constraints, or None (no
    constraints, an instruction without a mechanical fix, a fix that changes only whitespace,
    `text` is the root that was cut at its limit, or `text` is unsound beyond its broken
    instructions: degenerate, a leaked chat turn, the prompt restated; `editable` in
    services/judging/degeneration.py). Only the cut root itself is kept from the fix: a rewrite of
    it the refiner ended is an answer of the refiner's like any other. An unsound text goes to the
    refiner, since its fix would become a chosen answer with the rest trained as right."""
    from services.curriculum.refinements import refine
    from services.judging.degeneration import editable
    from services.refinement.search import normalise

    cut_root = prompt.get("cut_root")
    if not prompt.get("constraints") or (cut_root is not None and normalise(text) == normalise(cut_root)):
        return None
    question = prompt["messages"][-1]["content"]
    if not editable(text, question, prompt["constraints"]):
        return None
    fix = refine(text, prompt["constraints"], question)
    # a fix that only moves whitespace would be dropped by the search as a copy of its parent
    # (and end the search with no child): the refiner gets the turn instead
    return None if fix is None or normalise(fix) == normalise(text) else fix
