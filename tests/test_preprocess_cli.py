"""The gpt-preprocess entry point: Hydra overrides in, shards out, user errors as one line."""

import subprocess
import sys

from gpt.data import read_metadata
from gpt.preprocess import main

from tests.data.helpers import REPO, shakespeare_path


def test_main_writes_shards_with_overrides(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    (tmp_path / "b.txt").write_text("three\n\nstill three\n")
    out = tmp_path / "out"
    assert main([f"input=[{tmp_path / 'a.txt'},{tmp_path / 'b.txt'}]", f"output={out}", "split=file",
                 "tokenizer.kind=byte", "shard_tokens=8"]) == 0
    meta = read_metadata(out)
    assert meta["num_documents"] == 2 and len(meta["shards"]) == 2 and meta["source"]["split"] == "file"


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main([f"input={tmp_path / 'missing.txt'}", f"output={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"gpt-preprocess: error: input={tmp_path / 'missing.txt'}: no such file or directory"
    assert main(["input=x", f"output={tmp_path}", "tokenizer.kind=sentencepiece"]) == 2
    assert "tokenizer.kind=sentencepiece is not one of byte|bpe|hf|tiktoken" in capsys.readouterr().err
    assert main(["input=x", "output=y", "no_such_key=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err


def test_python_dash_m_runs_the_same_command(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "gpt.preprocess", f"input={shakespeare_path()}", f"output={out}",
                           "workers=2", "task_bytes=300000"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "tokens/s" in proc.stderr and read_metadata(out)["num_documents"] > 7000
    help_text = subprocess.run([sys.executable, "-m", "gpt.preprocess", "--help"], cwd=REPO, capture_output=True,
                               text=True, timeout=60).stdout
    assert "tokenizer.kind=byte|bpe|hf|tiktoken" in help_text
