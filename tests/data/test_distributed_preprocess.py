"""Preprocessing as a job array without SLURM (stage=tokenizer / encode / merge in this process): the
merged output is byte-identical to one process whatever the number of tasks, and the merge refuses,
in one line naming it, while a unit is missing, damaged or written with other settings.
The same flow under a real (local) SLURM is tests/slurm/test_sbatch_preprocess.py."""

import filecmp
import os

import pytest

from gpt.config.commands import TokenizerConfig
from gpt.data.inputs import plan_units, resolve_inputs, slice_of
from gpt.data.parts import parts_dir
from gpt.errors import DataError

from tests.data.helpers import mixed_corpus, preprocess

BPE = TokenizerConfig(kind="bpe", vocab_size=400, train_bytes=150_000)
SETTINGS = dict(unit_bytes=30_000, shard_tokens=30_000, tokenizer=BPE)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shakespeare):
    return mixed_corpus(tmp_path_factory.mktemp("mixed") / "in", shakespeare.read_text()[:500_000])


@pytest.fixture(scope="module")
def one_process(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "out"
    meta = preprocess(corpus, out, **SETTINGS)
    return out, meta


def array(corpus, out, tasks, only=None, **kw):
    """stage=tokenizer, then the encode tasks `only` (default: all) of `tasks`; returns the last metadata."""
    settings = {**SETTINGS, **kw}
    if not parts_dir(out).joinpath("tokenizer.json").exists():
        preprocess(corpus, out, stage="tokenizer", **settings)
    meta = {}
    for task in only if only is not None else range(tasks):
        meta = preprocess(corpus, out, stage="encode", task=task, tasks=tasks, **settings)
    return meta


def assert_identical(a, b):
    assert sorted(os.listdir(a)) == sorted(os.listdir(b))
    for name in os.listdir(a):
        assert filecmp.cmp(a / name, b / name, shallow=False), f"{name} differs"


def test_every_input_kind_is_read_and_units_end_shards(corpus, one_process):
    out, meta = one_process
    kinds = {(f.kind, f.compression) for f in resolve_inputs(str(corpus), "blank_lines")}
    assert kinds == {("text", None), ("text", "gz"), ("jsonl", "gz"), ("jsonl", "zst"), ("text", "zst"),
                     ("parquet", None), ("arrow", None)}
    units = plan_units(resolve_inputs(str(corpus), "blank_lines"), SETTINGS["unit_bytes"], "text")
    assert len(units) >= 7 and len(meta["shards"]) >= len(units), "every unit starts a new shard"
    assert meta["tokenizer"]["kind"] == "bpe" and (out / "tokenizer.json").is_file()


@pytest.mark.parametrize("tasks", [1, 4, 9])
def test_array_output_is_byte_identical_to_one_process_whatever_the_number_of_tasks(corpus, one_process, tmp_path, tasks):
    out = tmp_path / "out"
    meta = array(corpus, out, tasks)
    assert meta == one_process[1] and not parts_dir(out).exists(), "the last task merged and removed the parts"
    assert_identical(one_process[0], out)


def test_workers_and_task_sizes_do_not_change_the_bytes(corpus, one_process, tmp_path):
    out = tmp_path / "out"
    preprocess(corpus, out, workers=2, task_bytes=7_000, **SETTINGS)
    assert_identical(one_process[0], out)


def test_merge_refuses_a_missing_or_damaged_unit_in_one_line_and_a_rerun_completes_it(corpus, one_process, tmp_path):
    out = tmp_path / "out"
    assert array(corpus, out, 4, only=[0, 1, 3]) == {} and not out.exists(), "no merge while slice 2 is missing"
    units = plan_units(resolve_inputs(str(corpus), "blank_lines"), SETTINGS["unit_bytes"], "text")
    missing = slice_of(units, 2, 4)[0].index
    with pytest.raises(DataError) as e:
        preprocess(corpus, out, stage="merge", **SETTINGS)
    msg = str(e.value)
    assert "\n" not in msg and f"unit {missing} of {len(units)}" in msg and "is missing" in msg
    assert "slice 2 of 4" in msg and "sbatch --array=2 slurm/preprocess.sh" in msg
    # A finished unit damaged on disk: named by the merge, rewritten by a re-run of its task.
    damaged = parts_dir(out) / f"unit-{slice_of(units, 0, 4)[0].index:05d}" / "shard-00000.arrow"
    damaged.write_bytes(damaged.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"unit \d+ of \d+ .* is damaged: shard-00000.arrow is of the wrong size"):
        preprocess(corpus, out, stage="merge", **SETTINGS)
    array(corpus, out, 4, only=[0])     # rewrites the damaged unit; slice 2 is still missing
    meta = array(corpus, out, 1)        # `sbatch --array=2` alone: task 0 of 1 writes what is missing, merges
    assert meta == one_process[1]
    assert_identical(one_process[0], out)


def test_parts_from_other_settings_are_refused(corpus, tmp_path):
    out = tmp_path / "out"
    array(corpus, out, 3, only=[0])
    with pytest.raises(DataError, match=r"holds units written with other inputs or settings.*delete"):
        array(corpus, out, 3, only=[1], shard_tokens=20_000)
    with pytest.raises(DataError, match="train the tokenizer first with stage=tokenizer"):
        preprocess(corpus, tmp_path / "other", stage="encode", **SETTINGS)


def test_bpe_sample_is_a_deterministic_spread_of_about_train_bytes(shakespeare, tmp_path):
    from gpt.data.pipeline import sample_tasks

    big = tmp_path / "big.txt"
    big.write_text(shakespeare.read_text() * 20)           # 22 MB: the sample reads stretches of it
    units = plan_units(resolve_inputs(str(big), "blank_lines"), 5_000_000, "text")
    tasks = list(sample_tasks(units, 0.05))
    assert tasks == list(sample_tasks(units, 0.05)), "deterministic"
    taken = sum(t.end - t.start for t in tasks)
    assert 0.04 * big.stat().st_size < taken < 0.07 * big.stat().st_size
    assert min(t.start for t in tasks) == 0 and max(t.end for t in tasks) > 0.8 * big.stat().st_size, "spread"
    assert len({t.start // 5_000_000 for t in tasks}) == len(units), "from every unit"
