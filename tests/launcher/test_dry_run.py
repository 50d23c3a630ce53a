"""`python -m launcher --dry-run`: the derived layout and the exact command; refusals in one line."""

import re
import shlex
import subprocess
import sys

import pytest
from helpers import REPO, launch_env, run_module
from slurm_env import slurm_step

from launcher.environment import port_for_job

def launcher(args, **variables) -> subprocess.CompletedProcess:
    return run_module("launcher", args, env=launch_env(**variables), timeout=120)


def lines(text: str) -> dict:
    """'key: value' lines of the dry-run output."""
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if v}


def test_four_slurm_nodes_of_eight_gpus():
    overrides = ["model=gpt2-350m", "parallel.tensor=2", "train.global_batch_size=64", "train.micro_batch_size=2",
                 "run.dir=runs/350m"]
    proc = launcher(["--dry-run", "pretrain", *overrides],
                    **slurm_step(4, 2, CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7"))
    assert proc.returncode == 0, proc.stderr
    out = lines(proc.stdout)
    assert "node 2 of 4, 8 process(es) per node" in out["where"] and "-> 32 rank(s)" in out["where"]
    assert out["layout"] == "world=32 = tensor 2 x data 16 x pipeline 1; gradient accumulation 2"
    assert out["run dir"] == str(REPO / "runs" / "350m")
    argv = shlex.split(out["command"])
    assert argv[0].endswith("torchrun") or argv[1:3] == ["-m", "torch.distributed.run"]
    port = port_for_job("4242")
    for flag in ("--nnodes=4", "--node_rank=2", "--nproc_per_node=8", "--rdzv_backend=static",
                 "--master_addr=gpu-a01", f"--master_port={port}", "--max_restarts=0"):
        assert flag in argv
    assert argv[argv.index("-m"):] == ["-m", "gpt.pretrain", *overrides]  # overrides passed through unchanged


def test_one_box_is_standalone_and_options_may_follow_the_command():
    proc = launcher(["pretrain", "--dry-run", "train.micro_batch_size=4"], GPT_NPROC_PER_NODE="2")
    assert proc.returncode == 0, proc.stderr
    out = lines(proc.stdout)
    assert out["where"].startswith("local: node 0 of 1, 2 process(es) per node [GPT_NPROC_PER_NODE]")
    argv = shlex.split(out["command"])
    assert "--standalone" in argv and "--nproc_per_node=2" in argv and "--node_rank=0" not in argv
    assert argv[-3:] == ["-m", "gpt.pretrain", "train.micro_batch_size=4"]


def test_print_run_dir_is_absolute():
    proc = launcher(["--print-run-dir", "pretrain", "run.dir=runs/x"])
    assert proc.returncode == 0 and proc.stdout == f"{REPO / 'runs' / 'x'}\n"


def test_dry_run_imports_neither_torch_nor_deepspeed():
    code = ("import sys; from launcher.cli import launch; rc = launch(['--dry-run', 'pretrain']); "
            "print(rc, sorted(m for m in ('torch', 'deepspeed', 'megatron') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=launch_env(), cwd=REPO,
                          timeout=120)
    assert proc.stdout.splitlines()[-1] == "0 []", proc.stderr


@pytest.mark.parametrize("args, variables, message", [
    (["pretrain", "parallel.tensor=3"], {"GPT_NPROC_PER_NODE": "4"},
     r"world size 4 is not divisible by parallel.tensor\*parallel.pipeline\*parallel.context=3\*1\*1.*\[1 node\(s\) x 4 process"),
    (["pretrain", "train.global_batch_size=12", "train.micro_batch_size=2"], {"CUDA_VISIBLE_DEVICES": "0,1,2,3"},
     "train.global_batch_size=12 is not divisible"),
    (["pretrain"], slurm_step(2, 0, SLURM_STEP_NUM_TASKS="16"), "one task per node"),
    (["pretrian"], {}, "unknown command 'pretrian': choose one of"),
    (["generate"], {}, "unknown command 'generate'"),
    (["pretrain", "model.n_layers=3"], {}, "unknown config key 'model.n_layers'"),
    (["pretrain", "--cfg"], {}, "unrecognized arguments: --cfg"),
    (["--nproc-per-node=4", "pretrain"], {"CUDA_VISIBLE_DEVICES": "0,1"}, "4 processes per node .* 2 GPUs are visible"),
])
def test_impossible_requests_are_refused_in_one_line_before_anything_starts(args, variables, message):
    for mode in (["--dry-run"], []):  # the same refusal whether printing or launching
        proc = launcher([*mode, *args], **variables)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith("gpt-launch: error: ") and "Traceback" not in proc.stderr
        assert re.search(message, proc.stderr), proc.stderr


def test_several_nodes_from_the_batch_shell_are_refused_but_can_be_dry_run():
    batch = {"SLURM_JOB_ID": "9", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "n[1-2]"}
    proc = launcher(["pretrain"], **batch)
    assert proc.returncode == 2 and "srun --ntasks-per-node=1" in proc.stderr and proc.stderr.count("\n") == 1
    assert launcher(["--dry-run", "pretrain"], **batch).returncode == 0
