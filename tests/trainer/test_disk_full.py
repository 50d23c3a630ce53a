"""A disk that fills up during training, end to end: the metrics write fails, a save is attempted
and fails too, and the run ends with one line naming the paths and what was kept, the previous
checkpoint intact.

Unprivileged and in CI: the child process gets a file size limit (RLIMIT_FSIZE, SIGXFSZ ignored),
so every write past it fails with EFBIG at the OS boundary, as ENOSPC does on a full disk (the loop
handles both alike; test_stopping.py injects ENOSPC itself).
"""

import resource
import shutil
import signal

from helpers import env_for_subprocess, read_metrics, run_module, tiny_overrides

from gpt.checkpoint import format as fmt


def test_a_full_disk_mid_run_keeps_the_last_checkpoint_and_says_so_in_one_line(base_run, shards, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base_run, run)  # checkpoint step 10
    limit = (run / "metrics.jsonl").stat().st_size + 800  # room for two more steps' records, not a checkpoint

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**env_for_subprocess(), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = run_module("gpt.pretrain", tiny_overrides(shards, run, "train.steps=1000", "eval.every=0"), env=env,
                      preexec_fn=small_disk)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if "error:" in x]
    steps, _ = read_metrics(run)
    root = fmt.checkpoints_dir(run)
    stopped = steps[-1]["step"] + 1  # the step whose record did not fit
    assert f"saving checkpoint {root / fmt.step_dir_name(stopped)} failed (" in line and "File too large" in line
    assert f"writing {run / 'metrics.jsonl'} had failed too" in line
    assert f"kept: {root / 'step_00000010'} (a re-run resumes from it), {run / 'metrics.jsonl'} up to step {stopped - 1}" in line
    # The previous checkpoint is untouched and still the one a re-run resumes from.
    assert fmt.read_pointer(root, fmt.LATEST) == "step_00000010" and fmt.resolve(run) == root / "step_00000010"
    assert [p.name for p in fmt.complete_checkpoints(root)] == ["step_00000010"]
