"""Environment -> placement: SLURM (1 and 4 nodes, batch shell and srun step), torchrun's env, nothing set."""

import pytest
from slurm_env import slurm_step

from gpt.errors import ConfigError
from launcher.devices import visible_gpus
from launcher.environment import DEFAULT_PORT, Pinned, detect, port_for_job


def test_nothing_set_is_one_local_node():
    p = detect({})
    gpus = visible_gpus({})[0]  # /dev/nvidiaN on a GPU machine, none here
    assert (p.source, p.nnodes, p.node_rank, p.nproc_per_node) == ("local", 1, 0, gpus or 1)
    assert p.standalone and p.master_port is None and p.world == (gpus or 1)


def test_processes_per_node_follow_option_then_env_then_gpus():
    assert detect({"CUDA_VISIBLE_DEVICES": "0,1,2"}).nproc_per_node == 3
    assert detect({"CUDA_VISIBLE_DEVICES": ""}).nproc_per_node == 1  # no GPU: one CPU process
    assert detect({"CUDA_VISIBLE_DEVICES": "0,1", "GPT_NPROC_PER_NODE": "4"}).nproc_per_node == 4
    assert detect({"GPT_NPROC_PER_NODE": "4"}, Pinned(nproc_per_node=2)).nproc_per_node == 2
    p = detect({"SLURM_GPUS_ON_NODE": "8"})
    assert (p.nproc_per_node, p.gpus) == (8, 8) and "SLURM_GPUS_ON_NODE" in p.nproc_from


def test_slurm_one_node_batch_shell():
    env = {"SLURM_JOB_ID": "17", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "gpu07",
           "SLURM_GPUS_ON_NODE": "8"}
    p = detect(env)
    assert (p.source, p.nnodes, p.node_rank, p.nproc_per_node, p.world) == ("slurm", 1, 0, 8, 8)
    assert p.standalone and not p.slurm_step and p.job_id == "17"  # one node: torchrun picks a free port


def test_slurm_four_nodes_step_derives_rank_address_and_port():
    p = detect(slurm_step(4, 2, CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7"))
    assert (p.source, p.nnodes, p.node_rank, p.nproc_per_node, p.world) == ("slurm", 4, 2, 8, 32)
    assert p.slurm_step and not p.standalone
    assert p.master_addr == "gpu-a01"  # the first host of the allocation
    assert p.master_port == port_for_job("4242") == detect(slurm_step(4, 0)).master_port  # every node agrees
    assert port_for_job("4242") != port_for_job("4243")


def test_slurm_batch_script_exports_win_over_derivation():
    p = detect(slurm_step(4, 3, MASTER_ADDR="gpu-a02", MASTER_PORT="40123"))
    assert (p.master_addr, p.master_port, p.node_rank) == ("gpu-a02", 40123, 3)


def test_slurm_four_nodes_seen_from_the_batch_shell():
    env = {"SLURM_JOB_ID": "9", "SLURM_JOB_NUM_NODES": "4", "SLURM_JOB_NODELIST": "n[1-4]", "GPT_NPROC_PER_NODE": "2"}
    p = detect(env)
    assert (p.nnodes, p.node_rank, p.world, p.master_addr, p.slurm_step) == (4, 0, 8, "n1", False)


def test_slurm_more_than_one_task_per_node_is_refused():
    env = slurm_step(2, 0, SLURM_STEP_NUM_TASKS="16")
    with pytest.raises(ConfigError, match="one task per node.*--ntasks-per-node=1"):
        detect(env)


def test_torchrun_env_of_a_container():
    env = {"PET_NNODES": "4", "PET_NODE_RANK": "3", "PET_MASTER_ADDR": "job-0.svc", "PET_MASTER_PORT": "29400",
           "PET_NPROC_PER_NODE": "8"}
    p = detect(env)
    assert (p.source, p.nnodes, p.node_rank, p.nproc_per_node, p.master_addr, p.master_port) == \
           ("torchrun env", 4, 3, 8, "job-0.svc", 29400)
    plain = detect({"PET_NNODES": "2", "PET_NODE_RANK": "1", "MASTER_ADDR": "head", "CUDA_VISIBLE_DEVICES": "0,1"})
    assert (plain.master_addr, plain.master_port, plain.nproc_per_node) == ("head", DEFAULT_PORT, 2)


def test_pinned_options_override_the_environment():
    p = detect(slurm_step(4, 1), Pinned(nnodes=2, node_rank=0, master_addr="h0", master_port=1234, nproc_per_node=3))
    assert (p.nnodes, p.node_rank, p.master_addr, p.master_port, p.nproc_per_node) == (2, 0, "h0", 1234, 3)


@pytest.mark.parametrize("env, pinned, match", [
    ({"PET_NNODES": "1:4", "MASTER_ADDR": "h"}, Pinned(), "PET_NNODES=1:4.*fixed"),
    ({}, Pinned(nnodes=2), "node 0.*MASTER_ADDR.*--master-addr"),
    ({}, Pinned(nnodes=2, node_rank=2, master_addr="h"), r"node rank 2 is not in \[0, 1\]"),
    ({}, Pinned(nproc_per_node=0), "must be at least 1"),
    ({"GPT_NPROC_PER_NODE": "eight"}, Pinned(), "GPT_NPROC_PER_NODE='eight' is not an integer"),
    ({}, Pinned(nnodes=2, master_addr="h", master_port=70000), "port 70000"),
])
def test_impossible_placements_are_refused_in_one_line(env, pinned, match):
    with pytest.raises(ConfigError, match=match) as e:
        detect(env, pinned)
    assert "\n" not in str(e.value)
