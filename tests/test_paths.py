"""overwrite=true never destroys what a command reads (gpt/paths.py refuse_overlap): an output that
is, contains or lies inside an input is refused in one line before any work, for gpt-preprocess,
gpt-export and gpt-checkpoint convert.

Before: `gpt-preprocess input=corpus output=corpus overwrite=true` deleted the corpus and
`gpt-export checkpoint=runs/x output=runs/x overwrite=true` deleted the run's checkpoints and metrics.
"""

import shutil

import pytest

from gpt.checkpoint import format as fmt
from gpt.checkpoint.tools import convert
from gpt.errors import ConfigError
from gpt.hf.export import export_hf
from gpt.paths import overlap
from gpt.preprocess import main as preprocess


def snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_overlap_is_is_contains_and_lies_inside(tmp_path):
    a = tmp_path / "a"
    assert overlap(a, [a]) == (str(a), "is")
    assert overlap(a, [a / "x.txt"]) == (str(a / "x.txt"), "contains")
    assert overlap(a / "out", [a]) == (str(a), "lies inside")
    assert overlap(tmp_path / "ab", [a]) is None and overlap(tmp_path / "b", [a, tmp_path / "c"]) is None
    (tmp_path / "link").symlink_to(a, target_is_directory=True)
    a.mkdir()
    assert overlap(tmp_path / "link", [a]) == (str(a), "is")  # symlinks resolved


@pytest.mark.parametrize("case", ["is", "contains", "lies-inside"])
def test_preprocess_never_writes_over_its_input(tmp_path, corpus_file, capsys, case):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(corpus_file, corpus / "a.txt")
    before = snapshot(corpus)
    source, output = {"is": (corpus, corpus), "contains": (corpus / "a.txt", corpus),
                      "lies-inside": (corpus, corpus / "shards")}[case]
    assert preprocess([f"input={source}", f"output={output}", "overwrite=true", "tokenizer.kind=byte"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"the input input={source}" in err[0] and "choose an output directory outside" in err[0]
    assert snapshot(corpus) == before


@pytest.fixture
def run(base_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(base_run, copy)
    return copy


@pytest.mark.parametrize("checkpoint, output", [
    ("run", "run"),                                   # the run itself (its checkpoints and metrics)
    ("run", "run/checkpoints"),                       # inside the run named as the input
    ("run/checkpoints/step_00000010", "run"),         # contains the checkpoint
    ("run/checkpoints/latest", "run/checkpoints/step_00000010"),  # the checkpoint a pointer names
    ("run", "."),                                     # contains the run
])
def test_export_never_writes_over_the_checkpoint_it_reads(run, tmp_path, checkpoint, output):
    before = snapshot(run)
    where = {"run": run, ".": tmp_path}
    path = lambda rel: where[rel] if rel in where else run.parent / rel  # noqa: E731
    with pytest.raises(ConfigError, match="the input checkpoint=") as e:
        export_hf(path(checkpoint), path(output), overwrite=True)
    assert "\n" not in str(e.value)
    assert snapshot(run) == before


@pytest.mark.parametrize("output", ["step", "inside", "run"])
def test_convert_never_writes_over_the_checkpoint_it_reads(run, output):
    ckpt = fmt.checkpoints_dir(run) / "step_00000010"
    before = snapshot(run)
    target = {"step": ckpt, "inside": ckpt / "tp1", "run": run}[output]
    with pytest.raises(ConfigError, match="the input checkpoint=") as e:
        convert(ckpt, target, tensor=1, overwrite=True)
    assert "\n" not in str(e.value)
    assert snapshot(run) == before
