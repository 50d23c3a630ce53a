"""A training session that starts from a checkpoint (resume, model.init_from) builds its engine
without drawing the random init it would overwrite (see tests/model/test_init.py for construction)."""

import shutil

import pytest
import torch

from gpt.config import compose
from gpt.parallel import context as parallel


@pytest.mark.parametrize("how", ["resume", "init_from"])
def test_training_session_from_a_checkpoint_draws_nothing(how, base_run, shards, tmp_path, tiles_drawn):
    """open_session with a checkpoint to resume, or model.init_from: the engine is built without the
    random init, and the weights are the checkpoint's."""
    from helpers import tiny_overrides

    from gpt.checkpoint import format as fmt
    from gpt.checkpoint.reader import full_state_dict
    from gpt.config.validate import validate_training
    from gpt.data import read_metadata
    from gpt.model.build import model_shape
    from gpt.trainer import init_from
    from gpt.trainer.session import open_session

    run = tmp_path / "run"
    extra = ["device=cpu", "model.init_std=0.2", "train.peak_flops=1e11"]
    if how == "resume":
        shutil.copytree(base_run, run)
        overrides = tiny_overrides(shards, run, *extra, "train.steps=20")
    else:
        overrides = tiny_overrides(shards, run, *extra, f"model.init_from={base_run}")
    cfg = compose("pretrain", overrides)
    if cfg.model.init_from:
        init_from.prepare(cfg, shards)
    layout = validate_training(cfg, world_size=1)
    ctx = parallel.initialize(layout, "cpu")
    try:
        session = open_session(cfg, ctx, model_shape(cfg.model, read_metadata(shards)["tokenizer"]["vocab_size"]))
        try:
            assert tiles_drawn["tiles"] == 0
            saved = full_state_dict(fmt.resolve(base_run, verify=False))
            for name, p in session.engine.named_parameters():
                assert torch.equal(p.detach().float(), saved[name]), name
        finally:
            session.close()
    finally:
        parallel.destroy()
