"""Every collective of gpt/ goes through gpt/parallel/collectives.py (which puts tensors on the device
NCCL needs). A direct `dist.all_reduce(cpu_tensor)` elsewhere works under gloo and kills every
multi-GPU launch, so the rule is checked on the source itself, and at run time in every process the
tests start (tests/guard/collective_guard.py; the last test here proves that guard refuses bad calls)."""

import ast
import importlib.util
from pathlib import Path

import pytest
import torch
from helpers import GUARD

from gpt.parallel import collectives


def _load_guard():
    """tests/guard/collective_guard.py as a module (its directory stays off this process's sys.path)."""
    spec = importlib.util.spec_from_file_location("collective_guard", GUARD / "collective_guard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


guard = _load_guard()
GPT = Path(collectives.__file__).resolve().parents[1]
COLLECTIVES = guard.COLLECTIVES  # the run-time guard wraps exactly these


def _distributed_calls(path: Path) -> list[str]:
    """`name:line` of every call of a torch.distributed collective in `path`, however it is imported."""
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases = {"torch.distributed"}  # names that refer to the torch.distributed module
    direct = set()  # collectives imported by name: from torch.distributed import all_reduce
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "torch.distributed":
                    aliases.add(a.asname or a.name)
        elif isinstance(node, ast.ImportFrom) and node.module == "torch.distributed":
            direct |= {a.asname or a.name for a in node.names if a.name in COLLECTIVES}
        elif isinstance(node, ast.ImportFrom) and node.module == "torch":
            aliases |= {a.asname or a.name for a in node.names if a.name == "distributed"}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr in COLLECTIVES and ast.unparse(f.value) in aliases:
            found.append(f"{path.relative_to(GPT.parent)}:{node.lineno} {ast.unparse(f)}")
        elif isinstance(f, ast.Name) and f.id in direct:
            found.append(f"{path.relative_to(GPT.parent)}:{node.lineno} {f.id}")
    return found


def test_no_collective_outside_the_collectives_module():
    offenders = [hit for p in sorted(GPT.rglob("*.py")) if p.name != "collectives.py" or p.parent.name != "parallel"
                 for hit in _distributed_calls(p)]
    assert not offenders, "call these through gpt.parallel.collectives:\n" + "\n".join(offenders)


def test_the_check_sees_each_import_style(tmp_path):
    src = tmp_path / "bad.py"
    src.write_text("import torch\nimport torch.distributed as dist\nfrom torch.distributed import barrier\n"
                   "from torch import distributed as d2\n"
                   "dist.all_reduce(t)\ntorch.distributed.broadcast(t, 0)\nbarrier()\nd2.send(t, 1)\n")
    global GPT
    saved, GPT = GPT, tmp_path
    try:
        hits = _distributed_calls(src)
    finally:
        GPT = saved
    assert len(hits) == 4, hits


def test_a_world_of_one_needs_no_process_group():
    t = torch.ones(3)
    assert collectives.all_reduce(t) is t and collectives.all_gather(t).equal(t)
    assert collectives.all_gather_object({"a": 1}) == [{"a": 1}] and collectives.world_size() == 1
    assert collectives.device().type == "cpu"


# The run-time half: every process the tests start runs with tests/guard/sitecustomize.py, which
# refuses (at the call) a collective of gpt/ that bypasses gpt/parallel/collectives.py and a tensor
# that enters a collective off the gateway's device. Here, deliberately bad code under that guard.
PROBE = '''
import json, sys
import torch, torch.distributed as dist
from collective_guard import CollectiveGuardError
dist.init_process_group("gloo")
from gpt.parallel import collectives
import bad, gateway

def attempt(fn):
    try:
        fn()
        return "ran"
    except CollectiveGuardError:
        return "refused"

t = lambda: torch.ones(2)
results = {
    "gpt gateway": attempt(lambda: collectives.all_reduce(t())),
    "gpt gateway, object": attempt(lambda: collectives.all_gather_object({"rank": dist.get_rank()})),
    "not our code": attempt(lambda: dist.all_reduce(t())),
    "ours, direct": attempt(lambda: bad.direct(t())),
    "ours, distributed_c10d": attempt(lambda: bad.through_c10d(t())),
    "ours, getattr": attempt(lambda: bad.through_getattr(t())),
    "ours, deepspeed.comm": attempt(lambda: bad.through_deepspeed(t())),
    "gateway, tensor off its device": attempt(lambda: gateway.all_reduce(t())),
}
if dist.get_rank() == 0:
    print(json.dumps(results))
dist.destroy_process_group()
'''
BAD = '''
import torch.distributed as dist
from torch.distributed import distributed_c10d

def direct(t):
    dist.all_reduce(t)  # what count_parameters once did with a CPU tensor

def through_c10d(t):
    distributed_c10d.broadcast(t, 0)

def through_getattr(t):
    getattr(dist, "all_" + "reduce")(t)

def through_deepspeed(t):
    import deepspeed.comm
    from gpt.parallel.device import prepare_deepspeed
    prepare_deepspeed(t.device, "gloo")  # as build_engine does: adopts the process group
    deepspeed.comm.all_reduce(t)
'''
# A gateway whose collectives run on another device than the CPU (as NCCL's run on CUDA) and that
# forgets to move the caller's CPU tensor there: the bug class gpt/parallel/collectives.py prevents.
GATEWAY = '''
import torch, torch.distributed as dist

def device(group=None):
    return torch.device("meta")  # a device no stray CPU tensor is on

def all_reduce(t, group=None):
    dist.all_reduce(t, group=group)  # should have moved t to device(group) first
'''


@pytest.mark.distributed
def test_the_run_time_guard_refuses_what_the_rule_forbids(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from helpers import GUARD_MARKER, REPO, env_for_subprocess

    assert guard.MARKER == GUARD_MARKER
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "bad.py").write_text(BAD)
    (ours / "gateway.py").write_text(GATEWAY)
    (tmp_path / "probe.py").write_text(PROBE)
    env = env_for_subprocess()
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(ours)])
    env["GPT_COLLECTIVE_GUARD_OURS"] = os.pathsep.join([str(REPO / "gpt"), str(ours)])
    env["GPT_COLLECTIVE_GUARD_GATEWAYS"] = os.pathsep.join([str(REPO / "gpt" / "parallel" / "collectives.py"),
                                                            str(ours / "gateway.py")])
    torchrun_bin = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run([str(torchrun_bin), "--standalone", "--nproc_per_node=2", str(tmp_path / "probe.py")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results == {
        "gpt gateway": "ran", "gpt gateway, object": "ran", "not our code": "ran",
        "ours, direct": "refused", "ours, distributed_c10d": "refused", "ours, getattr": "refused",
        "ours, deepspeed.comm": "refused", "gateway, tensor off its device": "refused",
    }, results
    refusals = [line for line in proc.stderr.splitlines() if line.startswith(GUARD_MARKER)]
    assert len(refusals) == 2 * 5  # one line per refusal on each rank, naming the place and the fix
    assert any("bad.py:6 (direct); call it through gpt.parallel.collectives" in line for line in refusals), refusals
    assert any("got a tensor on cpu, but this rank's collectives run on meta" in line for line in refusals), refusals
