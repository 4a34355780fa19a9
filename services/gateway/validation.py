"""Validation of uploaded prompt items: every problem is reported with its line and field, and a
set with any problem is refused whole (nothing is half-stored).
"""
from __future__ import annotations

from typing import Any, Iterable

from fastapi import HTTPException

ROLES = ("system", "user", "assistant")
FIELDS = ("prompt", "reference", "constraints", "answer", "topic")


def _err(loc: list, msg: str) -> dict:
    return {"loc": loc, "msg": msg, "type": "invalid"}


def _messages(prompt: Any, loc: list, errors: list) -> list[dict] | None:
    if isinstance(prompt, str):
        if not prompt.strip():
            errors.append(_err(loc, "prompt text is empty"))
            return None
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        errors.append(_err(loc, "prompt must be a non-empty string or a non-empty list of chat messages"))
        return None
    out = []
    for j, m in enumerate(prompt):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            errors.append(_err(loc + [j], f"each message needs role in {ROLES} and string content"))
            return None
        if set(m) - {"role", "content"}:
            errors.append(_err(loc + [j], f"unknown message field(s) {sorted(set(m) - {'role', 'content'})}; "
                               "a message has only role and content"))
            return None
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user":
        errors.append(_err(loc, "the last message must come from the user"))
        return None
    return out


def _constraints(value: Any, loc: list, errors: list) -> list[dict] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        errors.append(_err(loc, "constraints must be a list of {id, kwargs}"))
        return None
    out = []
    for j, c in enumerate(value):
        if (not isinstance(c, dict) or not isinstance(c.get("id"), str) or not isinstance(c.get("kwargs", {}), dict)
                or set(c) - {"id", "kwargs"}):
            errors.append(_err(loc + [j], "each constraint is {'id': string, 'kwargs': object} and nothing else"))
            return None
        out.append({"id": c["id"], "kwargs": c.get("kwargs") or {}})
    try:
        from services.judging.verifier import validate_constraints
    except ImportError:  # judging not installed in this process: structure checked above
        return out
    errors.extend(_err(loc, msg) for msg in validate_constraints(out))
    return out


def validate_item(item: Any, loc: list, errors: list) -> dict | None:
    """A clean Prompt row (messages, reference, constraints, answer), or None with errors added."""
    before = len(errors)
    if not isinstance(item, dict):
        errors.append(_err(loc, "each item must be a JSON object"))
        return None
    unknown = sorted(set(item) - set(FIELDS))
    if unknown:
        errors.append(_err(loc + [unknown[0]], f"unknown field(s) {unknown}; allowed: {list(FIELDS)}"))
    if "prompt" not in item:
        errors.append(_err(loc + ["prompt"], "field required"))
        return None
    messages = _messages(item["prompt"], loc + ["prompt"], errors)
    for name in ("reference", "answer", "topic"):
        if item.get(name) is not None and not isinstance(item[name], str):
            errors.append(_err(loc + [name], f"{name} must be a string"))
    constraints = _constraints(item.get("constraints"), loc + ["constraints"], errors)
    if len(errors) > before:
        return None
    return {"messages": messages, "reference": item.get("reference"), "constraints": constraints,
            "answer": item.get("answer"), "topic": item.get("topic")}


def validate_items(items: Any, *, where: str = "items") -> tuple[list[dict], list[dict]]:
    if not isinstance(items, list) or not items:
        return [], [_err([where], "must be a non-empty list of prompt items")]
    errors: list[dict] = []
    clean = [validate_item(it, [where, i], errors) for i, it in enumerate(items)]
    return ([c for c in clean if c is not None] if not errors else []), errors


def parse_jsonl_lines(lines: Iterable[bytes], digest=None, max_errors: int = 100) -> tuple[list[dict], list[dict]]:
    """Parse and validate a JSONL upload line by line (the file is never held twice in memory);
    error locations name the 1-based line. `digest` (a hashlib object) is fed every byte read."""
    from services.gateway.limits import loads_strict

    errors: list[dict] = []
    clean = []
    seen = 0
    for n, raw in enumerate(lines, start=1):
        if digest is not None:
            digest.update(raw)
        if not raw.strip():
            continue
        seen += 1
        if len(errors) >= max_errors:
            continue  # keep reading (for the digest) but stop collecting errors
        try:
            obj = loads_strict(raw, ["file", f"line {n}"])
        except HTTPException as exc:
            errors.extend(exc.detail)
            continue
        clean.append(validate_item(obj, ["file", f"line {n}"], errors))
    if not seen:
        return [], [_err(["file"], "the file holds no JSON lines")]
    return ([c for c in clean if c is not None] if not errors else []), errors[:max_errors]


def parse_jsonl(text: str) -> tuple[list[dict], list[dict]]:
    return parse_jsonl_lines(line.encode("utf-8", "surrogatepass") for line in text.splitlines())
