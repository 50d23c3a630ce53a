"""Strings from a checkpoint or config are data; secrets interpolated from the environment never
leave the process, whatever their length (issue 12.2, last bullet)."""

import sys
import types

import pytest
import yaml
from helpers import run_module

from gpt.config import compose, secrets
from gpt.config.text import literal, structured
from gpt.config.training import DataConfig, ModelConfig


@pytest.fixture
def short_secret(monkeypatch):
    """A W&B key of 3 characters: too short for value matching alone, masked because it was interpolated."""
    monkeypatch.setenv("WANDB_API_KEY", "k3y")
    monkeypatch.setenv("MY_TOKEN", "tok")
    yield
    secrets._masked.clear()


def test_cfg_redacts_interpolated_secrets_whatever_their_length(short_secret):
    proc = run_module("gpt.pretrain", ["--cfg", "logging.wandb.name=${oc.env:WANDB_API_KEY}",
                                       "logging.wandb.project=p-${oc.env:MY_TOKEN}"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)["logging"]["wandb"]
    assert (printed["name"], printed["project"]) == ("<redacted>", "p-<redacted>")
    assert "k3y" not in proc.stdout and "tok" not in proc.stdout


def test_saved_config_and_wandb_fields_are_redacted(short_secret, tmp_path, monkeypatch):
    from gpt.trainer.metrics import WandbSink
    from gpt.trainer.session import config_dict

    cfg = compose("pretrain", ["logging.wandb.name=${oc.env:WANDB_API_KEY}", "logging.wandb.mode=offline"])
    assert cfg.logging.wandb.name == "k3y"  # the run itself may use it; nothing it writes or sends shows it
    saved = config_dict(cfg)
    assert saved["logging"]["wandb"]["name"] == "<redacted>"
    sent = {}
    fake = types.SimpleNamespace(init=lambda **kw: sent.update(kw) or types.SimpleNamespace(id="x"))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    WandbSink(cfg.logging.wandb, enabled=True, run_dir=tmp_path, config=saved, run_id=None)
    assert sent["name"] == "<redacted>" and "k3y" not in repr(sent)


def test_escaped_interpolation_is_saved_as_typed(tmp_path):
    """`model.name=\\${oc.env:HOME}` means the text `${oc.env:HOME}`: composed, saved, and read back as it."""
    from gpt.trainer.session import _write_config, config_dict

    cfg = compose("pretrain", ["model.name=\\${oc.env:HOME}", "run.dir=runs/${oc.env:HOME}"])
    assert (cfg.model.name, cfg.run.dir) == ("${oc.env:HOME}", "runs/${oc.env:HOME}")
    saved = config_dict(cfg)
    assert saved["model"]["name"] == "${oc.env:HOME}"
    _write_config(saved, tmp_path)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]["name"] == "${oc.env:HOME}"


@pytest.mark.parametrize("text", ["${oc.env:HOME}", "${oc.env:NOPE_NOT_SET}", "\\${x}", "${", "a\\\\${oc.env:HOME}"])
def test_configs_read_from_checkpoints_are_never_resolved(text):
    """A received checkpoint's meta.json config (gpt-generate, gpt-eval, resume): strings stay strings."""
    from gpt.generation.loading import model_config

    model = model_config({"config": {"model": {"name": text, "init_from": text}}})
    assert (model.name, model.init_from) == (text, text)
    assert structured(DataConfig, {"path": text, "blend": [[1.0, text]]}).blend == [[1.0, text]]
    assert structured(ModelConfig, {"name": literal(text)}).name == literal(text)  # escaping is not undone twice
