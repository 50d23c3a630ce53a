"""`sbatch slurm/preprocess.sh` on a real (local) SLURM: the driver trains the BPE once and submits an
array of 4 tasks; one task is killed, the merge refuses naming its slice, the task re-run alone
finishes and merges, and the result is byte-identical to a one-process gpt-preprocess run.

Resources are given on the sbatch command line; the driver passes them on to the array.
"""

import filecmp
import json
import os
import re
import time

import pytest
from helpers import REPO, run_module, shakespeare_path

SCRIPT = REPO / "slurm" / "preprocess.sh"
pytestmark = pytest.mark.slurm
RESOURCES = ["--partition=debug", "--cpus-per-task=1", "--time=20"]


def corpus(directory):
    """~0.6 MB of tiny shakespeare in three files (one of them gzip'd jsonl), in units of 80 kB."""
    import gzip

    text = shakespeare_path().read_text()[:600_000]
    directory.mkdir()
    (directory / "a.txt").write_text(text[:250_000])
    (directory / "b.txt").write_text(text[250_000:450_000])
    with gzip.open(directory / "c.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"text": p}) + "\n" for p in text[450_000:].split("\n\n") if p.strip())
    return directory


def test_array_of_four_one_killed_and_rerun_alone_merges_to_the_one_process_output(slurm, tmp_path):
    src = corpus(tmp_path / "in")
    args = [f"input={src}", "tokenizer.kind=bpe", "tokenizer.vocab_size=400", "tokenizer.train_bytes=200000",
            "unit_bytes=80000", "shard_tokens=50000"]
    out = tmp_path / "arr"
    driver = slurm.sbatch([*RESOURCES, str(SCRIPT), *args, f"output={out}", "tasks=4"], cwd=tmp_path)
    assert slurm.wait(driver).endswith("COMPLETED ExitCode=0:0"), slurm.logs()
    log = (tmp_path / f"slurm-{driver}_4294967294.out").read_text()
    assert "training a byte-level BPE" in log and "saved the tokenizer" in log
    array = re.search(r"Submitted batch job (\d+)", log).group(1)

    deadline = time.monotonic() + 300
    while slurm.show(f"{array}_2").get("JobState") in ("PENDING", "CONFIGURING", None):
        assert time.monotonic() < deadline, slurm.show(f"{array}_2")
        time.sleep(0.05)
    slurm.scancel(f"{array}_2")                   # killed while it starts its slice
    states = [slurm.wait(f"{array}_{i}") for i in range(4)]
    assert "CANCELLED" in states[2] and all(s.endswith("COMPLETED ExitCode=0:0") for k, s in enumerate(states) if k != 2), \
        states
    assert not out.exists() and (tmp_path / "arr.parts").is_dir()

    refused = run_module("gpt.preprocess", [*args, f"output={out}", "stage=merge"])
    error = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 2 and error.startswith(f"gpt-preprocess: error: output={out} cannot be merged: unit ")
    assert "is missing" in error and "slice 2 of 4" in error and "sbatch --array=2 slurm/preprocess.sh" in error

    rerun = slurm.sbatch(["--array=2", *RESOURCES, str(SCRIPT), *args, f"output={out}"], cwd=tmp_path)
    assert slurm.wait(f"{rerun}_2").endswith("COMPLETED ExitCode=0:0"), (tmp_path / f"slurm-{rerun}_2.out").read_text()
    assert re.search(r"merged \d+ units", (tmp_path / f"slurm-{rerun}_2.out").read_text())
    assert (out / "metadata.json").is_file() and not (tmp_path / "arr.parts").exists()

    one = tmp_path / "one"
    run_module("gpt.preprocess", [*args, f"output={one}"], check=True)
    assert sorted(os.listdir(one)) == sorted(os.listdir(out))
    for name in os.listdir(one):
        assert filecmp.cmp(one / name, out / name, shallow=False), f"{name} differs from the one-process output"
