"""The image, built and run as a user would (tier `docker`): --help, preprocessing and a pretraining into
mounted volumes as uid 1000 without a network, a `docker stop` (Kubernetes' SIGTERM) and the same command
again resuming, generation from that checkpoint, two processes in a container whose hostname does not
resolve, and two "nodes" (two containers, host network, torchrun's PET_* variables) that train together
exactly as one process does. Each container start costs seconds (torch, DeepSpeed imports): the runs are
few and tiny."""

import os
import socket
import time
import uuid

import pytest
from helpers import read_metrics, run_module, tiny_overrides

from gpt.checkpoint import format as fmt

pytestmark = pytest.mark.docker


def tiny(data: str, run: str, *extra: str) -> list[str]:
    """The tiny model of the other tests, with the container's paths."""
    return [a for a in tiny_overrides(data, run, "device=cpu", *extra) if a != "logging.tensorboard=false"]


@pytest.fixture(scope="module")
def volumes(tmp_path_factory, corpus_file):
    """/data and /runs of the containers: host directories owned by uid 1000, as a user would chown them."""
    root = tmp_path_factory.mktemp("volumes")
    data, runs = root / "data", root / "runs"
    for d in (data, runs):
        d.mkdir()
        os.chown(d, 1000, 1000)
    (data / "corpus.txt").write_bytes(corpus_file.read_bytes())
    return data, runs


def mounts(volumes) -> list[str]:
    data, runs = volumes
    return ["-v", f"{data}:/data", "-v", f"{runs}:/runs"]


def test_help(docker, image):
    proc = docker.run(["run", "--rm", "--network", "none", image])  # CMD is --help
    assert "gpt-launch" in proc.stdout and "PET_NNODES" in proc.stdout
    proc = docker.run(["run", "--rm", "--network", "none", "--entrypoint", "gpt-pretrain", image, "--help"])
    assert "usage: gpt-pretrain" in proc.stdout


def test_preprocess_pretrain_stop_resume_generate(docker, image, volumes):
    data, runs = volumes
    docker.run(["run", "--rm", "--network", "none", *mounts(volumes), "--entrypoint", "gpt-preprocess", image,
                "input=/data/corpus.txt", "output=/data/shards", "tokenizer.kind=byte"])
    assert (data / "shards" / "metadata.json").stat().st_uid == 1000

    # The very same command twice: stopped by `docker stop` (SIGTERM to the launcher) mid-run, then resumed.
    label = f"gpt-test={uuid.uuid4().hex}"
    command = ["run", "--rm", "--init", "--network", "none", "--label", label, *mounts(volumes), image, "pretrain",
               *tiny("/data/shards", "/runs/tiny", "train.steps=200", "checkpoint.every=50", "eval.every=100")]
    first = docker.popen(command)
    metrics = runs / "tiny" / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        assert first.poll() is None, first.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "no training steps within 600 s"
        time.sleep(0.2)
    ids = docker.run(["ps", "-q", "--filter", f"label={label}"]).stdout.split()
    docker.run(["stop", "-t", "120", *ids])
    _, err = first.communicate(timeout=300)
    assert first.returncode == 143, err[-4000:]  # saved, unfinished: 128 + SIGTERM
    started = err.split("starting: ", 1)[1].splitlines()[0]
    assert "-m gpt.pretrain" in started and "torchrun" not in started  # one process: no rendezvous to hang in
    assert "stopped by signal after step" in err
    stopped = fmt.read_meta(fmt.resolve(runs / "tiny"))["step"]
    assert 1 <= stopped < 200

    second = docker.run(command, timeout=900)
    assert f"at step {stopped} " in second.stderr  # "resumed from .../step_000000NN at step NN (...)"
    steps, evals = read_metrics(runs / "tiny")
    assert [r["step"] for r in steps] == list(range(1, 201)) and [e["step"] for e in evals] == [100, 200]
    assert (runs / "tiny" / "metrics.jsonl").stat().st_uid == 1000
    assert any((runs / "tiny" / "tensorboard").iterdir())

    text = docker.run(["run", "--rm", "--network", "none", *mounts(volumes), "--entrypoint", "gpt-generate", image,
                       "checkpoint=/runs/tiny", "prompt=To be", "max_new_tokens=24", "temperature=0"]).stdout
    assert text.startswith("To be") and len(text) > len("To be")  # the prompt, then what the model continues


def test_two_processes_in_a_container_whose_hostname_does_not_resolve(docker, image, volumes):
    """--network none: the container's hostname resolves to nothing; torchrun must not need it."""
    proc = docker.run(["run", "--rm", "--init", "--network", "none", "--hostname", "nowhere-at-all", "-e",
                       "GPT_NPROC_PER_NODE=2", *mounts(volumes), image, "pretrain",
                       *tiny("/data/shards", "/runs/two-procs", "train.steps=2", "eval.every=0")], timeout=600)
    assert "--local_addr=127.0.0.1" in proc.stderr
    assert fmt.read_meta(fmt.resolve(volumes[1] / "two-procs"))["layout"]["world"] == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_train_together_as_one_process_does(docker, image, volumes, tmp_path):
    """Node 0 and node 1 are two containers on the host network meeting through PET_*; data parallel 2
    must give the one-process run's losses (fp32; the reduction order differs, so 1e-5 relative, as in
    tests/engine/test_parity.py)."""
    data, runs = volumes
    port = free_port()
    args = tiny("/data/shards", "/runs/two-nodes", "train.steps=6", "eval.every=3")
    nodes = [docker.popen(["run", "--rm", "--init", "--network", "host", "-e", "PET_NNODES=2", "-e", f"PET_NODE_RANK={r}",
                           "-e", "PET_MASTER_ADDR=127.0.0.1", "-e", f"PET_MASTER_PORT={port}", "-e", "GPT_NPROC_PER_NODE=1",
                           *mounts(volumes), image, "pretrain", *args]) for r in (0, 1)]
    for node in nodes:
        _, err = node.communicate(timeout=900)
        assert node.returncode == 0, err[-4000:]
    assert fmt.read_meta(fmt.resolve(runs / "two-nodes"))["layout"]["world"] == 2

    reference = tmp_path / "one"
    run_module("gpt.pretrain", tiny(str(data / "shards"), str(reference), "train.steps=6", "eval.every=3",
                                    "logging.tensorboard=false"), check=True)
    (a, va), (b, vb) = read_metrics(runs / "two-nodes"), read_metrics(reference)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 7))
    for x, y in zip(a + va, b + vb):
        for key in ("loss", "grad_norm", "val_loss"):
            if key in x:
                assert x[key] == pytest.approx(y[key], rel=1e-5), (x["step"], key)
