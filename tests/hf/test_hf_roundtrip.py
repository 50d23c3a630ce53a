"""Hugging Face round trip: a GPT-2 style model trained at tensor parallel 2 and a Llama style one
(grouped-query attention, untied head) at pipeline parallel 2 are exported with gpt-export, loaded
by `transformers` (AutoModelForCausalLM, AutoTokenizer; config-only classes, nothing downloaded), and
compared with our own forward pass and gpt-generate. Each export then seeds a run at the other layout
through model.init_from, whose step-0 checkpoint must export to the very same bytes.

Logit tolerance: both sides compute in fp32 on CPU with the same weights; only the order of
operations differs (our fused qkv and vocab-parallel head vs separate projections, different SDPA
kernels), so differences are fp32 round-off: measured below 3e-7 on logits of size ~1. An absolute
1e-5 leaves a 30x margin; a wrong mapping (a transposed Conv1D, q/k/v in the wrong order, another
rotary convention) changes logits by O(1). The models use model.init_std=0.2 so that, after a few
steps, greedy continuations are varied (a barely-trained model repeats one byte, which would let a
broken position or cache go unnoticed) with top-2 margins far above that round-off.
"""

import os

import pytest
import torch
from helpers import run_module, tiny_overrides, torchrun

from gpt.checkpoint import format as fmt

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers must never reach the network here
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytestmark = pytest.mark.distributed

LLAMA = ("model.norm=rmsnorm", "model.position=rope", "model.activation=swiglu", "model.bias=false",
         "model.tie_embeddings=false", "model.n_kv_head=2")
FAMILIES = {  # model keys, layout it is trained at, HF class, layout init_from loads it into
    "gpt2": ((), "parallel=tp2", "GPT2LMHeadModel", "parallel=pp2"),
    "llama": (LLAMA, "parallel=pp2", "LlamaForCausalLM", "parallel=tp2"),
}
COMMON = ("train.steps=3", "eval.every=0", "model.init_std=0.2")
PROMPT = "ROMEO:"
FILES = ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json")


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def exported(request, shards, tmp_path_factory):
    keys, layout, cls, other = FAMILIES[request.param]
    base = tmp_path_factory.mktemp(request.param)
    torchrun(2, "gpt.pretrain", tiny_overrides(shards, base / "run", *COMMON, *keys, layout))
    run_module("gpt.export", [f"checkpoint={base / 'run'}", f"output={base / 'hf'}", "format=hf"], check=True)
    return {"family": request.param, "run": base / "run", "hf": base / "hf", "cls": cls, "other": other}


def _our_model(run):
    from gpt.generation.loading import load_model, release

    loaded = load_model(run, "cpu")
    return loaded, release


def test_transformers_loads_the_export_and_agrees(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gpt.generation.sampling import generate

    model = AutoModelForCausalLM.from_pretrained(exported["hf"]).eval()
    tok = AutoTokenizer.from_pretrained(exported["hf"])
    assert type(model).__name__ == exported["cls"] and model.dtype == torch.float32
    loaded, release = _our_model(exported["run"])
    try:
        text = "To be or not to be, that is the question: whether 'tis nobler"  # < max_seq_len=64 bytes
        ids = loaded.tokenizer.encode(text)
        assert tok(text)["input_ids"] == ids and tok.eos_token_id == loaded.tokenizer.eod_id
        x = torch.tensor([ids])
        with torch.no_grad():
            theirs = model(x).logits
            ours = loaded.model(x)[..., : loaded.shape.vocab_size]
        assert theirs.shape == ours.shape
        assert (theirs - ours).abs().max().item() < 1e-5

        prompt = torch.tensor([loaded.tokenizer.encode(PROMPT)])
        ours_ids = list(generate(loaded.model, prompt, max_new_tokens=40, vocab_size=loaded.shape.vocab_size,
                                 temperature=0.0, stop_ids=(loaded.tokenizer.eod_id,)))
    finally:
        release()
    with torch.no_grad():
        theirs_ids = model.generate(prompt, max_new_tokens=40, do_sample=False,
                                    pad_token_id=tok.eos_token_id)[0, prompt.shape[1]:].tolist()
    assert ours_ids == theirs_ids and len(set(ours_ids)) > 5  # varied, so positions and the cache matter
    # gpt-generate's window is the training context (train.seq_len=32): compare the tokens inside it.
    within = 32 - prompt.shape[1]
    cli = run_module("gpt.generate", [f"checkpoint={exported['run']}", f"prompt={PROMPT}",
                                      f"max_new_tokens={within}", "temperature=0"], check=True).stdout
    assert cli.rstrip("\n") == tok.decode(prompt[0].tolist() + theirs_ids[:within], skip_special_tokens=True)


def test_export_init_from_export_is_bit_identical(exported, shards, tmp_path):
    run = tmp_path / "run"
    # The preset says tiny (4 layers, 128 wide); the HF config.json decides the architecture.
    torchrun(2, "gpt.pretrain", [f"data.path={shards}", f"run.dir={run}", "model=tiny", f"model.init_from={exported['hf']}",
                                 exported["other"], "train.seq_len=32", "train.global_batch_size=8",
                                 "train.micro_batch_size=2", "train.steps=1", "eval.every=0",
                                 "logging.wandb.mode=disabled", "logging.every=0"])
    step0 = fmt.checkpoints_dir(run) / "step_00000000"
    assert fmt.read_meta(step0)["layout"]["pipeline" if exported["other"] == "parallel=pp2" else "tensor"] == 2
    again = tmp_path / "again"
    run_module("gpt.export", [f"checkpoint={step0}", f"output={again}"], check=True)
    for name in FILES:
        assert (again / name).read_bytes() == (exported["hf"] / name).read_bytes(), name
    assert (fmt.checkpoints_dir(run) / "step_00000001").is_dir()  # and it trained on from there
