"""gpt-plot: one PNG with training loss, validation loss, learning rate and tokens/s against steps and
tokens, one line per run; checked by decoding the PNG (size, each run's colour drawn) and counting
the figure's lines."""

import json

import numpy as np
from helpers import run_module

from gpt.trainer.curves import PANELS, plot, read_run

C0, C1 = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)  # matplotlib's first two cycle colours


def synthetic_run(path, steps=40, seq_len=16):
    """A run.dir as gpt-pretrain writes it: step records, evaluations every 10 steps, a config.yaml."""
    path.mkdir()
    rows = []
    for s in range(1, steps + 1):
        rows.append({"step": s, "loss": 5.0 / s ** 0.3, "lr": 1e-3 * min(1.0, s / 5), "tokens_per_s": 1000.0 + s,
                     "consumed_samples": 8 * s})
        if s % 10 == 0:
            rows.append({"step": s, "val_loss": 5.2 / s ** 0.3, "val_ppl": 100.0, "eval_time_s": 0.1})
    rows.append({"step": steps, "tiny_choice/acc": 0.5})  # a task record: not a panel, must not break anything
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 41, "lo')
    (path / "config.yaml").write_text(f"train:\n  seq_len: {seq_len}\n")
    return path


def colour_pixels(image, rgb, tol=0.02) -> int:
    return int((np.abs(image[..., :3] - np.array(rgb) / 255.0) < tol).all(-1).sum())


def test_plot_one_line_per_run(base_run, tmp_path):
    other = synthetic_run(tmp_path / "other")
    out = tmp_path / "plots" / "curves.png"
    proc = run_module("gpt.plot", [str(base_run), str(other), f"output={out}"], check=True)
    assert "wrote" in proc.stderr

    from matplotlib.image import imread

    image = imread(out)  # decodes
    assert image.shape[:2] == (700, 1600)  # 16 x 7 inches at dpi 100
    assert colour_pixels(image, C0) > 200 and colour_pixels(image, C1) > 200  # both runs are drawn

    runs = [read_run(base_run), read_run(other)]
    fig = plot(runs, tmp_path / "again.png")
    axes = fig.axes
    assert len(axes) == 2 * len(PANELS)
    for i, (key, _) in enumerate(PANELS):
        with_values = [r.name for r in runs if r.steps.get(key)]
        for ax in (axes[i], axes[len(PANELS) + i]):  # against steps, against tokens
            assert [line.get_label() for line in ax.get_lines()] == with_values, key
    assert [line.get_label() for line in axes[0].get_lines()] == [base_run.name, "other"]
    # the bottom row's x axis is tokens: consumed samples x seq_len
    tokens = axes[len(PANELS)].get_lines()[1].get_xdata()
    assert list(tokens[:3]) == [8 * 16, 16 * 16, 24 * 16]
    assert list(axes[1].get_lines()[-1].get_xdata()) == [10, 20, 30, 40]  # validation loss of `other`


def test_not_a_run_is_one_line(tmp_path):
    proc = run_module("gpt.plot", [str(tmp_path), f"output={tmp_path / 'x.png'}"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (f"gpt-plot: error: {tmp_path} has no metrics.jsonl (gpt-plot takes "
                                                     "run.dirs of gpt-pretrain / gpt-finetune)")
