"""The layer contracts of pyproject.toml ([tool.importlinter]) hold: `lint-imports` passes from the
repository root, so the test command fails as soon as an import breaks a layer. A second test
makes sure the check can fail at all: a contract the code is known to break must be reported."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = str(Path(sys.executable).with_name("lint-imports"))


def _lint(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--no-cache", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_layer_contracts_are_kept():
    out = _lint()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout and "shared imports no service KEPT" in out.stdout


def test_a_broken_contract_fails_the_check(tmp_path):
    # The recipes use the generation service (they must), so forbidding that import is a contract
    # the code breaks; lint-imports has to say so with a non-zero exit.
    config = tmp_path / "broken.toml"
    config.write_text('[tool.importlinter]\nroot_packages = ["shared", "services"]\n\n'
                      '[[tool.importlinter.contracts]]\nname = "recipes without generation"\ntype = "forbidden"\n'
                      'source_modules = ["services.methods"]\nforbidden_modules = ["services.generation"]\n')
    out = _lint("--config", str(config))
    assert out.returncode != 0 and "BROKEN" in out.stdout, out.stdout + out.stderr


def test_only_the_settings_read_the_environment():
    """Every setting is a field of shared/config.Settings: no other module of shared/ or services/
    reads the process environment."""
    readers = [str(p.relative_to(ROOT)) for pkg in ("shared", "services") for p in (ROOT / pkg).rglob("*.py")
               if p != ROOT / "shared" / "config.py"
               and any(s in p.read_text(encoding="utf-8") for s in ("os.environ", "os.getenv", "getenv("))]
    assert readers == []
