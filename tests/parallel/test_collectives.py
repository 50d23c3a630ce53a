"""Every collective of gpt/ goes through gpt/parallel/collectives.py (which puts tensors on the device
NCCL needs). A direct `dist.all_reduce(cpu_tensor)` elsewhere works under gloo and kills every
multi-GPU launch, so the rule is checked on the source itself."""

import ast
from pathlib import Path

import torch

from gpt.parallel import collectives

GPT = Path(collectives.__file__).resolve().parents[1]
COLLECTIVES = {"all_reduce", "all_gather", "all_gather_object", "all_gather_into_tensor", "broadcast",
               "broadcast_object_list", "barrier", "reduce", "reduce_scatter", "reduce_scatter_tensor", "send",
               "recv", "isend", "irecv", "batch_isend_irecv", "all_to_all", "all_to_all_single", "gather",
               "scatter", "gather_object", "scatter_object_list", "monitored_barrier"}


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
