"""fp16's dynamic loss scale survives a resume: the scale and the counters that decide its next move.

This CPU has no fp16 kernels (DeepSpeed refuses fp16 here, tests/engine/test_precision.py), so the
first test gives a real ZeRO-1 engine the very scaler object fp16 would create (DeepSpeed's
DynamicLossScaler), moves it through an overflow, and checks that save -> load into a fresh engine
restores it so that both continue identically. Where fp16 kernels exist the second test resumes a
real fp16 run and requires it to be bit-identical to the uninterrupted one.
"""

import pytest
import torch
from helpers import read_metrics, run_module, tiny_overrides

from gpt.checkpoint import format as fmt
from gpt.checkpoint.load import load
from gpt.checkpoint.save import save
from gpt.config.loader import compose
from gpt.config.validate import validate_training
from gpt.data.loader import Batch
from gpt.engine.engine import build_engine
from gpt.model.build import model_shape
from gpt.parallel import context


def _scaler():
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler

    # What train.precision=fp16 configures (gpt/engine/deepspeed_config.py): 2^16, window 1000, hysteresis 2.
    return DynamicLossScaler(init_scale=2.0**16, scale_window=1000, min_scale=1, delayed_shift=2,
                             consecutive_hysteresis=False, raise_error_at_min_scale=False, dtype=torch.half)


def test_the_loss_scale_and_its_hysteresis_come_back(shards, tmp_path):
    cfg = compose("pretrain", tiny_overrides(shards, tmp_path / "run", "parallel.zero_stage=1", "device=cpu"))
    ctx = context.initialize(validate_training(cfg, world_size=1), "cpu")
    try:
        shape = model_shape(cfg.model, 257)
        x = torch.randint(0, 257, (2, 33), generator=torch.Generator().manual_seed(0))
        batch = [Batch(x[:, :-1], x[:, 1:], torch.full((2, 32), 1 / 64))]
        engine = build_engine(cfg, ctx, shape)
        engine.train_step(batch)
        scaler = engine.optimizer.loss_scaler = _scaler()
        for overflow in (True, False, False, False):  # one overflow eats one unit of hysteresis, not the scale
            scaler.update_scale(overflow)
        assert (scaler.cur_scale, scaler.cur_hysteresis, scaler.cur_iter) == (2.0**16, 1, 4)
        config = {"model": {}, "train": {"seed": 1}, "parallel": {"zero_stage": 1}}
        ckpt = save(engine, step=1, trainer_state={"step": 1}, config=config, tokenizer=None, run_dir=tmp_path / "run")
        assert fmt.read_meta(ckpt)["loss_scaler"] == {"cur_scale": 2.0**16, "cur_iter": 4, "last_overflow_iter": 0,
                                                      "cur_hysteresis": 1}

        fresh = build_engine(cfg, ctx, shape)
        restored = fresh.optimizer.loss_scaler = _scaler()
        load(fresh, ckpt, materialize=lambda: fresh.train_step([Batch(b.tokens, b.labels, b.weights * 0) for b in batch]))
        state = ("cur_scale", "cur_iter", "last_overflow_iter", "cur_hysteresis")
        assert [getattr(restored, k) for k in state] == [getattr(scaler, k) for k in state]
        for overflow in (True, False, True):  # with hysteresis 1 left, the next overflow halves the scale
            scaler.update_scale(overflow)
            restored.update_scale(overflow)
            assert restored.cur_scale == scaler.cur_scale and restored.cur_hysteresis == scaler.cur_hysteresis
        assert scaler.cur_scale == 2.0**14
    finally:
        context.destroy()


def _fp16_kernels() -> bool:
    if torch.cuda.is_available():
        return True
    from gpt.parallel.device import choose_device

    choose_device("cpu")
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().is_fp16_supported()


@pytest.mark.gpu
@pytest.mark.skipif(not _fp16_kernels(), reason="no fp16 kernels here; the test above checks the scaler state")
def test_fp16_resume_is_exact(shards, tmp_path):
    """fp16 + ZeRO-1, stopped after step 5 and resumed: bit-identical to 10 straight steps, with the
    scaler's counters where the straight run has them."""
    args = ("train.precision=fp16", "parallel.zero_stage=1", "train.steps=10", "eval.every=0")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_module("gpt.pretrain", tiny_overrides(shards, straight, *args), check=True)
    run_module("gpt.pretrain", tiny_overrides(shards, resumed, *args, "train.stop_at=5"), check=True)
    run_module("gpt.pretrain", tiny_overrides(shards, resumed, *args), check=True)
    a, b = read_metrics(straight)[0], read_metrics(resumed)[0]
    assert [(r["step"], r["loss"], r["grad_norm"], r["skipped"]) for r in a] == \
        [(r["step"], r["loss"], r["grad_norm"], r["skipped"]) for r in b]
    assert fmt.read_meta(fmt.resolve(straight))["loss_scaler"] == fmt.read_meta(fmt.resolve(resumed))["loss_scaler"]
