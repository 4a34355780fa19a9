"""Settings: embedded mode installs its own Settings instead of changing the environment."""
from __future__ import annotations


def test_embedded_settings_are_installed_not_written_to_the_environment(tmp_path, monkeypatch):
    import os

    from shared.config import Settings, get_settings, use_settings

    monkeypatch.setenv("AUTODIDACT_GENERATION_SHARD_SIZE", "3")
    before = dict(os.environ)
    use_settings(Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}", execution="inline"))
    try:
        s = get_settings()
        assert s.execution == "inline" and s.database_url.endswith("x.db")
        assert s.generation_shard_size == 3  # the rest still comes from the environment
        assert dict(os.environ) == before
    finally:
        get_settings.cache_clear()
    assert get_settings().execution == os.environ.get("AUTODIDACT_EXECUTION", "celery")
