"""Where an API run may take its base model from: 'gemma' or 'gemma-chat', a model directory
under one of the configured model roots (AUTODIDACT_MODEL_ROOTS), or a hub id the deployment allows
(AUTODIDACT_ALLOWED_HUB_MODELS). Never an arbitrary path on the gateway host.

A name under a root is given relative to it ("tiny") or as its full path inside the root. Every
refusal reads the same and lists the accepted names, never a path, so answers tell a client
nothing about which directories exist elsewhere on the host. (Embedded mode runs on the user's
own machine and takes any local directory; this module is the API's edge.)
"""
from __future__ import annotations

import re
from pathlib import Path

from shared.config import Settings

BUILT_IN = ("gemma", "gemma-chat")  # shipped with the package (shared/modeling.py)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
MAX_LISTED = 50


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def roots(settings: Settings) -> list[Path]:
    out = []
    for r in _split(settings.model_roots):
        try:
            out.append(Path(r).resolve())
        except (OSError, RuntimeError):
            continue
    return out


def _is_model(path: Path) -> bool:
    try:
        return (path / "config.json").is_file()
    except (OSError, ValueError):
        return False


def available(settings: Settings) -> list[str]:
    """Accepted base_model names: gemma, the model directories directly under each root (by name),
    and the allowed hub ids."""
    names = list(BUILT_IN)
    for root in roots(settings):
        try:
            names += sorted(p.name for p in root.iterdir() if p.is_dir() and _is_model(p))
        except OSError:
            continue
    names += _split(settings.allowed_hub_models)
    return list(dict.fromkeys(names))


def _inside_root(name: str, settings: Settings) -> Path | None:
    if not NAME.match(name.lstrip("/")) or ".." in Path(name).parts:
        return None
    for root in roots(settings):
        try:
            candidate = (Path(name) if name.startswith("/") else root / name).resolve()
        except (OSError, RuntimeError, ValueError):
            continue
        if candidate.is_relative_to(root) and candidate != root and _is_model(candidate):
            return candidate
    return None


def resolve(name: str, settings: Settings) -> tuple[str | None, list[dict]]:
    """(the value to store as the run's base model, []) or (None, [error naming base_model])."""
    if name in BUILT_IN or name in _split(settings.allowed_hub_models):
        return name, []
    found = _inside_root(name, settings)
    if found is not None and not found.is_relative_to(Path(settings.artifact_dir).resolve()):
        return str(found), []
    names = available(settings)
    shown = ", ".join(names[:MAX_LISTED]) + (f" (and {len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else "")
    return None, [{"loc": ["base_model"], "msg": f"not an available model; choose one of: {shown} "
                   "(GET /v1/base-models lists them; an operator adds models under the model roots)"}]
