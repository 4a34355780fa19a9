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


# ---------------------------------------------------------------- exported models
# An export of version V in dtype D lives in exports/version<V>-<D>/ beside the workspace's runs:
# the merged model directory, its .tar.gz (written last, by rename: its presence means ready), and
# `requested` / `error.txt` markers. The files are the state: exports add no table.
EXPORT_STALE_SECONDS = 2 * 3600  # a request older than this without a result may be sent again


def export_dir(workspace_id: int, version_id: int, dtype: str) -> Path:
    return root() / f"ws{workspace_id}" / "exports" / f"version{version_id}-{dtype}"


def export_name(version_id: int) -> str:
    return f"autodidact-v{version_id}"


def export_state(workspace_id: int, version_id: int, dtype: str) -> dict:
    """{status: absent | pending | ready | failed, path, archive, archive_bytes, error, requested_at}."""
    import time

    d = export_dir(workspace_id, version_id, dtype)
    archive = d / f"{export_name(version_id)}.tar.gz"
    requested = d / "requested"
    error = d / "error.txt"
    state = {"status": "absent", "path": None, "archive": None, "archive_bytes": None, "error": None,
             "requested_at": requested.stat().st_mtime if requested.exists() else None}
    if archive.exists():
        return {**state, "status": "ready", "path": str(d / export_name(version_id)), "archive": str(archive),
                "archive_bytes": archive.stat().st_size}
    if error.exists():
        return {**state, "status": "failed", "error": error.read_text(encoding="utf-8")[-2000:]}
    if requested.exists():
        stale = time.time() - requested.stat().st_mtime > EXPORT_STALE_SECONDS
        return {**state, "status": "stale" if stale else "pending"}
    return state


def tar_gz(directory: Path, out: Path) -> Path:
    """A directory as a .tar.gz whose members sit under the directory's name; written beside `out`
    and renamed, so `out` exists only complete."""
    import tarfile
    import uuid

    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}")
    try:
        with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:  # weights and Arrow barely compress
            tar.add(directory, arcname=Path(directory).name)
        tmp.rename(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
