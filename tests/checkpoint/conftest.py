"""Runs shared by the checkpoint tests (each made once per session, then copied before being changed)."""

import pytest
from helpers import env_for_subprocess, run_module, tiny_overrides, torchrun

# 12 steps in all; the first leg of every resume stops after 6 (train.stop_at, as a preemption would).
STEPS = ("train.steps=12", "eval.every=6")
SECRET = "sk-test-0123456789abcdef"  # in the environment of `saved_run`, never to be written anywhere


@pytest.fixture(scope="session")
def twelve_steps() -> tuple[str, ...]:
    return STEPS


@pytest.fixture(scope="session")
def reference(shards, tmp_path_factory):
    """12 uninterrupted steps in one process: what every resumed or resharded run must reproduce."""
    run = tmp_path_factory.mktemp("reference") / "run"
    run_module("gpt.pretrain", tiny_overrides(shards, run, *STEPS), check=True)
    return run


@pytest.fixture(scope="session")
def tp2_half(shards, tmp_path_factory):
    """The first 6 of 12 steps at tensor parallel 2 (checkpoint step_00000006)."""
    run = tmp_path_factory.mktemp("tp2_half") / "run"
    torchrun(2, "gpt.pretrain", tiny_overrides(shards, run, *STEPS, "parallel=tp2", "train.stop_at=6"))
    return run


@pytest.fixture(scope="session")
def saved_run(shards, tmp_path_factory):
    """One process, 4 steps, a checkpoint every 2 (step 2 and step 4 kept), with a secret in its
    environment that the config pulls in through an interpolation, as a careless yaml might."""
    run = tmp_path_factory.mktemp("saved") / "run"
    env = env_for_subprocess()
    env["WANDB_API_KEY"] = SECRET
    proc = run_module("gpt.pretrain", tiny_overrides(shards, run, "train.steps=4", "eval.every=0", "checkpoint.every=2",
                                                     "checkpoint.keep_last=0",
                                                     "logging.wandb.entity=${oc.env:WANDB_API_KEY}"),
                      env=env, check=True)
    return run, proc.stdout + proc.stderr, SECRET
