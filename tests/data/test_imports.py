"""gpt.data stays light: preprocessing workers and tools never pay for torch, deepspeed or megatron."""

import subprocess
import sys

from tests.data.helpers import REPO


def test_preprocessing_imports_no_torch_and_loading_no_deepspeed():
    code = ("import sys, gpt.data, gpt.data.preprocess, gpt.data.encode, gpt.data.shards; "
            "assert 'torch' not in sys.modules, 'torch'; "
            "from gpt.data import build_loaders; "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('deepspeed', 'megatron')]")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
