"""What only a GPU can check (`make gpu-check`; skipped where no CUDA device is visible).

Every run is the tiny model of helpers.tiny_overrides on one GPU. Tolerances as in
tests/engine/test_precision.py (bf16 against fp32: 2e-2 on the loss, 1e-1 on the gradient norm,
and above 1e-6, so the run really computed in bf16) and test_parity.py (compiled against eager
fp32: 1e-5 / 1e-4; TF32 stays off, PyTorch's default).
"""

import pytest
import torch
from helpers import read_metrics, run_module, tiny_overrides
from parity import deviation

pytestmark = pytest.mark.gpu

CUDA = ("device=cuda", "model.init_std=0.2")


@pytest.fixture(scope="module")
def runs(shards, tmp_path_factory):
    done = {}

    def run(*extra: str):
        if extra not in done:
            run_dir = tmp_path_factory.mktemp("gpu") / "run"
            run_module("gpt.pretrain", tiny_overrides(shards, run_dir, *CUDA, *extra), check=True)
            done[extra] = run_dir
        return done[extra]

    return run


def test_bf16_trains_close_to_fp32(runs):
    dev = deviation(runs("train.compile=false"), runs("train.precision=bf16", "train.compile=false"))
    assert 1e-6 < dev.loss < 2e-2 and dev.val_loss < 2e-2 and dev.grad_norm < 1e-1, dev


def test_compiled_blocks_match_eager(runs):
    dev = deviation(runs("train.compile=false"), runs("train.compile=true"))
    assert dev.loss < 1e-5 and dev.val_loss < 1e-5 and dev.grad_norm < 1e-4, dev


def test_resume_is_exact(runs, shards, tmp_path):
    """bf16 with compiled blocks (the GPU default), stopped after step 5 and run again: bit for bit the
    straight run (fp32 weights and fused-AdamW moments come back from the checkpoint)."""
    straight = runs("train.precision=bf16")
    run = tmp_path / "run"
    args = tiny_overrides(shards, run, *CUDA, "train.precision=bf16")
    run_module("gpt.pretrain", [*args, "train.stop_at=5"], check=True)
    assert "resumed from" in run_module("gpt.pretrain", args, check=True).stderr
    a, b = read_metrics(straight), read_metrics(run)
    assert [(r["loss"], r["grad_norm"]) for r in a[0]] == [(r["loss"], r["grad_norm"]) for r in b[0]]


@pytest.fixture(scope="module")
def session(shards, tmp_path_factory):
    from gpt.config import compose, validate_training
    from gpt.data import read_metadata
    from gpt.model.build import model_shape
    from gpt.parallel import context as parallel
    from gpt.trainer.session import open_session

    cfg = compose("pretrain", tiny_overrides(shards, tmp_path_factory.mktemp("gpu-session") / "run", *CUDA,
                                             "train.precision=bf16", "logging.every=5"))
    layout = validate_training(cfg)
    ctx = parallel.initialize(layout, "cuda")
    s = open_session(cfg, ctx, model_shape(cfg.model, read_metadata(shards)["tokenizer"]["vocab_size"]))
    yield s
    s.close()
    parallel.destroy()


def test_training_steps_never_wait_for_the_device(session):
    """Between two reads (logging.every) a step launches work and returns: no host synchronisation in
    the whole per-step path (fused AdamW, the on-device skip, prefetched pinned batches)."""
    from gpt.trainer.loop import read_steps, train_step

    train_step(session)  # compile, allocations
    read_steps(session)
    opt = session.engine.optimizer
    assert opt.defaults["fused"]
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            train_step(session)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    records = read_steps(session)
    assert len(records) == 3 and all(r["loss"] > 0 for r in records)


def test_flash_attention_is_taken_in_bf16(session):
    """Training attention (causal, no mask) under autocast runs with only the flash kernel allowed."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = session.engine.module
    b = session.train_data.global_batch(0)[0].to("cuda")
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(b.tokens, labels=b.labels, weights=b.weights)  # raises if flash cannot take it
    loss.backward()
    model.zero_grad(set_to_none=True)


def test_generation_with_cache_matches_without(runs):
    from gpt.generation.loading import load_model, release
    from gpt.generation.sampling import generate

    loaded = load_model(runs("train.compile=false"), "cuda")
    try:
        prompt = torch.tensor([loaded.tokenizer.encode("ROMEO:")], device="cuda")
        kw = dict(max_new_tokens=20, vocab_size=loaded.shape.vocab_size, temperature=0.0,
                  window=loaded.context_length)
        cached = list(generate(loaded.model, prompt, use_cache=True, **kw))
        plain = list(generate(loaded.model, prompt, use_cache=False, **kw))
    finally:
        release()
    assert cached == plain and len(cached) == 20
