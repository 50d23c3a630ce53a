"""HF weight files named by an index stay inside their directory (gpt/hf/files.py): a `weight_map`
entry is a plain file name, a regular file (a FIFO would hang model.init_from), not a symlink out."""

import json
import os

import pytest
import torch
from helpers import no_hang
from safetensors.torch import save_file

from gpt.errors import ConfigError
from gpt.hf.files import SAFETENSORS_INDEX, HFWeights


def hf_dir(tmp_path, target: str):
    d = tmp_path / "hf"
    d.mkdir()
    (d / SAFETENSORS_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": {"wte.weight": target}}))
    return d


@pytest.mark.parametrize("target", ["../outside.safetensors", "/etc/passwd", "..", "sub/../../x.safetensors", ""])
def test_a_weight_map_entry_outside_the_directory_is_refused_before_reading(tmp_path, target):
    save_file({"wte.weight": torch.zeros(2)}, str(tmp_path / "outside.safetensors"))
    with pytest.raises(ConfigError, match="weight_map.*not a plain file name inside its directory") as e:
        HFWeights(hf_dir(tmp_path, target))
    assert "\n" not in str(e.value)


def test_a_weight_file_symlinked_outside_is_refused(tmp_path):
    save_file({"wte.weight": torch.zeros(2)}, str(tmp_path / "outside.safetensors"))
    d = hf_dir(tmp_path, "model-00001-of-00001.safetensors")
    (d / "model-00001-of-00001.safetensors").symlink_to(tmp_path / "outside.safetensors")
    with pytest.raises(ConfigError, match="is a symlink to .*outside"):
        HFWeights(d).get("wte.weight")


def test_a_fifo_weight_file_does_not_hang(tmp_path):
    d = hf_dir(tmp_path, "model-00001-of-00001.safetensors")
    os.mkfifo(d / "model-00001-of-00001.safetensors")
    with no_hang(d / "model-00001-of-00001.safetensors"), \
            pytest.raises(ConfigError, match=r"is not a regular file \(a FIFO\)"):
        HFWeights(d).get("wte.weight")


def test_a_plain_index_still_loads(tmp_path):
    d = hf_dir(tmp_path, "model-00001-of-00001.safetensors")
    save_file({"wte.weight": torch.ones(3)}, str(d / "model-00001-of-00001.safetensors"))
    assert HFWeights(d).get("wte.weight").tolist() == [1.0, 1.0, 1.0]
