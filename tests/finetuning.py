"""Fine-tuning runs shared by the PEFT, trainer, export and parity tests.

The base model is the tiny model of `helpers.tiny_overrides` (2 blocks, 64 wide) pretrained for 10
steps on tiny shakespeare bytes; the instruction data are two-digit sums ("37+45=" -> "37 plus 45 is
82") in both record shapes (prompt/response and chat messages), byte-tokenised with gpt-preprocess
format=sft, of which 10% are held out for validation.
"""

import json
import random
from pathlib import Path

from helpers import QUIET, run_module

FINETUNE = ("train.seq_len=32", "train.global_batch_size=8", "train.micro_batch_size=2", "train.steps=10",
            "optim.warmup_steps=2", "optim.lr=1e-2", "eval.every=5", "eval.iters=2", "data.val_fraction=0.1",
            "device=cpu", *QUIET)


def finetune_overrides(base: Path, sft: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"checkpoint={base}", f"data.path={sft}", f"run.dir={run_dir}", *FINETUNE, *extra]


def sum_records(n: int = 400, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for i in range(n):
        a, b = rng.randrange(100), rng.randrange(100)
        if i % 4:
            records.append({"prompt": f"{a}+{b}=", "response": f"{a} plus {b} is {a + b}"})
        else:
            records.append({"messages": [{"role": "user", "content": f"{a}+{b}="},
                                         {"role": "assistant", "content": f"{a} plus {b} is {a + b}"}]})
    return records


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def make_sft_shards(directory: Path) -> Path:
    src = write_jsonl(directory / "sums.jsonl", sum_records())
    out = directory / "sft"
    run_module("gpt.preprocess", ["format=sft", f"input={src}", f"output={out}"], check=True)
    return out


def state(run_dir: Path, step: int) -> dict:
    """The full (one-process) state dict of checkpoint `step` of a run."""
    from gpt.checkpoint import format as fmt
    from gpt.checkpoint.reader import full_state_dict

    return full_state_dict(fmt.checkpoints_dir(run_dir) / fmt.step_dir_name(step))
