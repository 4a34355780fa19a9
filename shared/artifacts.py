"""Where model versions live: one directory per version under the artifact root (a shared volume
in the distributed stack). Paths are stored in the database relative to nothing: absolute URIs."""
from __future__ import annotations

from pathlib import Path

from shared.config import get_settings


def root() -> Path:
    path = Path(get_settings().artifact_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def version_dir(workspace_id: int, run_id: int, round_number: int, role: str = "policy") -> Path:
    return root() / f"ws{workspace_id}" / f"run{run_id}" / f"round{round_number}-{role}"


def checkpoint_dir(workspace_id: int, run_id: int, round_number: int, role: str = "policy") -> Path:
    return root() / f"ws{workspace_id}" / f"run{run_id}" / "checkpoints" / f"round{round_number}-{role}"
