"""megatron-core comes in through gpt/parallel/megatron_core.py and DeepSpeed's Muon under
gpt/parallel/lazy_compile.py: no torch.compile at import and no wandb at start-up (2-3 s of every
rank's start on this CPU), with the libraries' torch.compile'd functions unchanged."""

import ast
import subprocess
import sys
from pathlib import Path

from helpers import env_for_subprocess

from gpt.parallel import lazy_compile, megatron_core

GPT = Path(megatron_core.__file__).resolve().parents[1]


def test_gpt_imports_megatron_only_through_its_module():
    """A `from megatron.core import ...` run before gpt.parallel.megatron_core would import megatron
    the slow way; every import of megatron in gpt/ is in that one module."""
    found = []
    for path in sorted(GPT.rglob("*.py")):
        if path.name == "megatron_core.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.relative_to(GPT)}:{node.lineno}" for n in names if n.split(".")[0] == "megatron"]
    assert found == [], f"import megatron.core's names from gpt.parallel.megatron_core: {found}"


def result_words(code: str) -> list[str]:
    """The words after RESULT on the lines `code` prints, run in a fresh interpreter (nothing imported yet)."""
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True,
                         env=env_for_subprocess()).stdout
    return [w for line in out.splitlines() if line.startswith("RESULT ") for w in line.split()[1:]]


def test_training_imports_neither_dynamo_nor_wandb_and_wandb_still_imports():
    code = ("import sys, torch; original = torch.compile\n"
            "import gpt.trainer.session, gpt.model.tp_layers, gpt.parallel.context, gpt.parallel.device\n"
            "import torch.distributed as dist; dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)\n"
            "gpt.parallel.device.prepare_deepspeed(torch.device('cpu'), 'gloo')\n"
            "import deepspeed.runtime.zero.muon.muon_optimizer\n"
            "import megatron.core.jit\n"
            "print('RESULT', sorted(m for m in ('torch._dynamo', 'torch._inductor', 'wandb') if m in sys.modules), torch.compile is original,\n"
            "      megatron.core.jit.jit_fuser.__name__)\n"
            "import wandb; print('RESULT', wandb.__name__)\n")
    out = result_words(code)
    assert out == ["[]", "True", "compile_on_first_call", "wandb"], out


def test_a_kernel_is_compiled_by_torch_compile_when_first_called(monkeypatch):
    compiled = []

    def fake_compile(fn, **options):
        compiled.append(options)
        return lambda *a: fn(*a) + 1

    monkeypatch.setattr(lazy_compile, "_torch_compile", fake_compile)

    @lazy_compile.compile_on_first_call(dynamic=False)
    def double(x):
        """Twice x."""
        return 2 * x

    assert compiled == [] and double.__doc__ == "Twice x." and double.__name__ == "double"
    assert double(3) == 7 and double(4) == 9 and compiled == [{"dynamic": False}]
    assert lazy_compile.compile_on_first_call(lambda x: x)(5) == 6 and len(compiled) == 2


def test_building_a_model_imports_no_dynamo():
    """The model is built on the meta device: a computation there (RoPE's tables) runs torch's Python
    refs, which import torch._dynamo (1.4 s of every rank's construction); shapes only, there."""
    code = ("import sys, torch\n"
            "from gpt.config.loader import compose\n"
            "from gpt.model.build import build_model, model_shape\n"
            "for name in ('llama-1b', 'gpt2-124m'):\n"
            "    cfg = compose('pretrain', [f'model={name}', 'model.n_layer=1', 'model.vocab_size=256', 'data.path=unused'])\n"
            "    model = build_model(cfg.model, model_shape(cfg.model, 256), seed=1, tp_size=1, tp_group=None)\n"
            "    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])\n"
            "print('RESULT', sorted(m for m in ('torch._dynamo', 'torch._inductor', 'torch.onnx') if m in sys.modules))\n")
    assert result_words(code) == ["[]"]
