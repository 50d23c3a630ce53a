"""Shared fixtures: a small real corpus preprocessed once per session.

Tiers (markers): plain tests are single-process CPU; `distributed` tests start several processes
under torchrun/gloo; `slurm` tests submit to a real local SLURM. All run in CI (`make test`).
Helper functions live in helpers.py (importable as `helpers`: pytest puts tests/ on sys.path).
"""

from pathlib import Path

import pytest
from helpers import run_module, shakespeare_path


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    """~200 KB of real text (tiny shakespeare when present, else this Python's own sources)."""
    out = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    src = shakespeare_path()
    if src is not None:
        out.write_bytes(src.read_bytes()[:200_000])
    else:
        import sysconfig

        stdlib = Path(sysconfig.get_paths()["stdlib"])
        out.write_text("\n\n".join((stdlib / f).read_text() for f in ("os.py", "functools.py", "textwrap.py")))
    return out


@pytest.fixture(scope="session")
def shards(tmp_path_factory, corpus_file) -> Path:
    """Byte-tokenised shards of `corpus_file`, made with the real gpt-preprocess."""
    out = tmp_path_factory.mktemp("shards") / "bytes"
    run_module("gpt.preprocess", [f"input={corpus_file}", f"output={out}", "tokenizer.kind=byte"], check=True)
    return out
