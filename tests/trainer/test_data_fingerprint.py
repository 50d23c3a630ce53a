"""Resuming on other data is refused in one line unless data.allow_changed=true: checkpoints record a
fingerprint of the token shards (from their metadata.json: no shard is read).

Before: shards rewritten between stop and resume (same tokenizer, different text) resumed silently
at the "next sample" of different data.
"""

import json
import shutil

import pytest
from helpers import read_metrics, run_module, tiny_overrides

from gpt.checkpoint import format as fmt
from gpt.config import compose
from gpt.data import read_metadata
from gpt.data.format import fingerprint
from gpt.errors import CheckpointError
from gpt.preprocess import main as preprocess
from gpt.trainer.session import check_data, data_fingerprint


@pytest.fixture(scope="module")
def other_shards(corpus_file, tmp_path_factory):
    """The same tokenizer (bytes), other text: the corpus with its lines in reverse order."""
    text = tmp_path_factory.mktemp("other-text") / "reversed.txt"
    text.write_text("\n".join(reversed(corpus_file.read_text().splitlines())))
    out = tmp_path_factory.mktemp("other-shards") / "bytes"
    assert preprocess([f"input={text}", f"output={out}", "tokenizer.kind=byte"]) == 0
    return out


def test_the_fingerprint_follows_content_not_paths_and_reads_no_shard(shards, other_shards, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(shards, moved)
    for shard in moved.glob("*.arrow"):
        shard.unlink()  # only metadata.json is read
    assert fingerprint(read_metadata(moved)) == fingerprint(read_metadata(shards))
    assert fingerprint(read_metadata(other_shards)) != fingerprint(read_metadata(shards))


def test_check_data_refuses_a_change_in_one_line_unless_allowed(shards, other_shards, tmp_path, gpt_log):
    before = data_fingerprint(compose("pretrain", tiny_overrides(shards, tmp_path)))
    cfg = compose("pretrain", tiny_overrides(other_shards, tmp_path))
    now = data_fingerprint(cfg)
    check_data(None, now, cfg, tmp_path, 80)  # a checkpoint from before fingerprints: nothing to compare
    check_data(now, now, cfg, tmp_path, 80)
    with pytest.raises(CheckpointError) as e:
        check_data(before, now, cfg, tmp_path, 80)
    message = str(e.value)
    assert "\n" not in message and f"the token shards in {other_shards} are not those it was trained on" in message
    assert "sample 80 of different data" in message and "data.allow_changed=true" in message
    allowed = compose("pretrain", tiny_overrides(other_shards, tmp_path, "data.allow_changed=true"))
    check_data(before, now, allowed, tmp_path, 80)
    assert any("data.allow_changed=true" in r.getMessage() for r in gpt_log)


def test_resume_on_other_shards_is_refused_then_allowed(base_run, other_shards, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base_run, run)  # trained 10 steps on `shards`
    args = tiny_overrides(other_shards, run, "train.steps=11", "eval.every=0")
    refused = run_module("gpt.pretrain", args)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    (line,) = [x for x in refused.stderr.splitlines() if "error:" in x]
    assert "are not those it was trained on" in line and "data.allow_changed=true" in line
    assert [p.name for p in fmt.complete_checkpoints(fmt.checkpoints_dir(run))] == ["step_00000010"]

    allowed = run_module("gpt.pretrain", [*args, "data.allow_changed=true"], check=True)
    assert "data.allow_changed=true: the token shards" in allowed.stderr
    steps, _ = read_metrics(run)
    assert [r["step"] for r in steps] == list(range(1, 12)) and steps[-1]["consumed_samples"] == 88
    meta = json.loads((fmt.checkpoints_dir(run) / "step_00000011" / fmt.META).read_text())
    assert meta["trainer"]["data"]["train"][0]["sha256"] == fingerprint(read_metadata(other_shards))
