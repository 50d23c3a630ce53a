"""gpt-export of fine-tuned checkpoints: LoRA merged into a plain transformers model, or on its own
in the `peft` library's format (loaded with peft.PeftModel on the exported base), for GPT-2 (fused
c_attn, Conv1D, fan_in_fan_out) and Llama (separate q/k/v, grouped-query attention, SwiGLU);
BitFit as a plain model; adapters only unmerged. Nothing is downloaded (config-only classes).

Logit tolerance as in test_hf_roundtrip.py: same weights in fp32, only the order of operations
differs (fused vs split projections, a folded vs a separate low-rank product), so differences are
fp32 round-off, measured ~5e-7 on logits of size ~5; 1e-5 absolute leaves a 20x margin while a
wrong row permutation of B, a transposed factor or a wrong scale moves logits by far more.
"""

import os

import pytest
import torch
from finetuning import finetune_overrides
from helpers import run_module, tiny_overrides

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

LORA = ("peft=lora", "peft.targets=[attn,mlp]")
LLAMA = ("model=llama-tiny", "model.n_layer=2", "model.n_embd=64", "model.n_kv_head=2", "model.max_seq_len=64")
TEXT = "### User:\n17+25=\n\n### Assistant:\n42"


def ours(run, merge=False):
    from gpt.generation.loading import load_model, release

    loaded = load_model(run, "cpu", merge_peft=merge)
    ids = torch.tensor([loaded.tokenizer.encode(TEXT)])
    with torch.no_grad():
        logits = loaded.model(ids)[..., : loaded.shape.vocab_size]
    release()
    return ids, logits


def export(run, out, *args):
    run_module("gpt.export", [f"checkpoint={run}", f"output={out}", *args], check=True)
    return out


@pytest.fixture(scope="module")
def llama_lora(sft_shards, tmp_path_factory):
    base = tmp_path_factory.mktemp("llama")
    args = [a for a in tiny_overrides(sft_shards, base / "base", "eval.every=0", "device=cpu") if a != "model=tiny"]
    run_module("gpt.pretrain", [*args, *LLAMA], check=True)
    run = base / "lora"
    run_module("gpt.finetune", finetune_overrides(base / "base", sft_shards, run, *LORA, "eval.every=0"), check=True)
    return run


def _peft_logits(out, ids):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(out / "base").eval()
    model = PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        return model(ids).logits, type(base).__name__


def test_gpt2_lora_in_peft_format_and_merged(finetune, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, _ = finetune(1, *LORA)
    ids, expected = ours(run)
    separate = export(run, tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {p.name for p in separate.iterdir()}
    got, cls = _peft_logits(separate, ids)
    assert cls == "GPT2LMHeadModel" and (got - expected).abs().max() < 1e-5

    merged_dir = export(run, tmp_path / "merged", "merge_peft=true")
    assert not (merged_dir / "adapter_config.json").exists() and not (merged_dir / "base").exists()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    with torch.no_grad():
        assert (merged(ids).logits - expected).abs().max() < 1e-5
        # The base alone differs: the adapter matters (so the comparisons above can fail).
        plain = AutoModelForCausalLM.from_pretrained(separate / "base").eval()
        assert (plain(ids).logits - expected).abs().max() > 1e-2

    # Greedy decoding of the merged export in transformers == ours, unmerged and merged. Without
    # stopping at the end-of-document token (the model answers sums in a few tokens and ends them),
    # so that 32 varied tokens are compared; then the CLI, which stops there and (like any
    # gpt-generate) keeps the context within the trained sequence length.
    from gpt.generation.loading import load_model, release
    from gpt.generation.sampling import generate

    tok = AutoTokenizer.from_pretrained(merged_dir)
    prompt = "### User:\n17+25=\n\n### Assistant:\n"
    x = torch.tensor([tok(prompt)["input_ids"]])
    with torch.no_grad():
        theirs = merged.generate(x, max_new_tokens=32, min_new_tokens=32, do_sample=False, eos_token_id=None,
                                 pad_token_id=tok.eos_token_id)[0, x.shape[1]:].tolist()
    assert len(set(theirs)) >= 2  # not one repeated token: positions and the KV cache matter
    for merge in (False, True):
        loaded = load_model(run, "cpu", merge_peft=merge)
        common = dict(max_new_tokens=32, vocab_size=loaded.shape.vocab_size, temperature=0.0)
        assert list(generate(loaded.model, x, stop_ids=(), **common)) == theirs, merge
        windowed = list(generate(loaded.model, x, stop_ids=(loaded.tokenizer.eod_id,), window=loaded.context_length,
                                 **common))
        release()
        cli = run_module("gpt.generate", [f"checkpoint={run}", "prompt=17+25=", "chat=true", "max_new_tokens=32",
                                          "temperature=0", f"merge_peft={str(merge).lower()}", "device=cpu"], check=True)
        assert cli.stdout[:-1] == prompt + tok.decode(windowed), merge  # the CLI ends with one newline


def test_llama_lora_splits_qkv_for_peft(llama_lora, tmp_path):
    ids, expected = ours(llama_lora)
    out = export(llama_lora, tmp_path / "adapter")
    got, cls = _peft_logits(out, ids)
    assert cls == "LlamaForCausalLM" and (got - expected).abs().max() < 1e-5
    import json

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["target_modules"] == ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj",
                                        "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"]
    assert not config["fan_in_fan_out"] and config["r"] == 8 and config["lora_alpha"] == 16.0


def test_bitfit_exports_plain_and_adapters_only_unmerged(finetune, tmp_path):
    from transformers import AutoModelForCausalLM

    run, _ = finetune(1, "peft=bitfit")
    ids, expected = ours(run)
    out = export(run, tmp_path / "bitfit")
    with torch.no_grad():
        assert (AutoModelForCausalLM.from_pretrained(out)(ids).logits - expected).abs().max() < 1e-5

    run, _ = finetune(1, "peft=adapter", "peft.bottleneck=8")
    proc = run_module("gpt.export", [f"checkpoint={run}", f"output={tmp_path / 'no'}", "merge_peft=true"])
    assert proc.returncode == 2 and "cannot be folded into the weights; export with merge_peft=false" in proc.stderr
    assert not (tmp_path / "no").exists()
    out = export(run, tmp_path / "adapters")
    assert (out / "base" / "model.safetensors").is_file() and (out / "adapters.safetensors").is_file()
    from safetensors import safe_open

    names = set(safe_open(str(out / "adapters.safetensors"), "pt").keys())
    assert names and all(".adapter." in n for n in names)


def test_finetune_starts_from_a_hugging_face_directory(finetune, sft_shards, tmp_path):
    """`checkpoint=<HF dir>`: the architecture and weights come from the directory; step 0 of the
    fine-tune (LoRA B = 0) computes what transformers computes with it."""
    from transformers import AutoModelForCausalLM

    run, _ = finetune(1, "peft=bitfit")
    hf = export(run, tmp_path / "hf")
    ft = tmp_path / "ft"
    run_module("gpt.finetune", finetune_overrides(hf, sft_shards, ft, "peft=lora", "train.steps=2", "eval.every=0"),
               check=True)
    ids, expected = ours(ft / "checkpoints" / "step_00000000")
    with torch.no_grad():
        assert (AutoModelForCausalLM.from_pretrained(hf)(ids).logits - expected).abs().max() < 1e-5
    assert (ft / "checkpoints" / "step_00000002").is_dir()
