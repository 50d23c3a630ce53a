"""Training curves of one or several runs from their metrics.jsonl, drawn with matplotlib (gpt-plot).

Two rows of four panels: training loss, validation loss, learning rate and tokens/s, against the
optimizer step (top) and against training tokens (bottom: consumed samples x train.seq_len, from
the run's config.yaml). One line per run and panel, in the same colour in every panel.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from gpt.errors import ConfigError

PANELS = (("loss", "training loss"), ("val_loss", "validation loss"), ("lr", "learning rate"),
          ("tokens_per_s", "tokens/s"))


@dataclass
class Curves:
    name: str
    seq_len: int
    steps: dict[str, list[int]] = field(default_factory=dict)  # field -> steps with a value
    values: dict[str, list[float]] = field(default_factory=dict)
    samples_at: dict[int, int] = field(default_factory=dict)  # step -> consumed samples after it

    def tokens(self, key: str) -> list[int]:
        return [self.samples_at.get(s, 0) * self.seq_len for s in self.steps.get(key, [])]


def read_run(run_dir: str | Path, name: str | None = None) -> Curves:
    """A run.dir's metrics.jsonl as per-field series (null values and cut-short lines skipped)."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no metrics.jsonl (gpt-plot takes run.dirs of gpt-pretrain / gpt-finetune)")
    seq_len = 1
    config = run_dir / "config.yaml"
    if config.is_file():
        from omegaconf import OmegaConf

        seq_len = int(OmegaConf.load(config).get("train", {}).get("seq_len", 1))
    curves = Curves(name=name or run_dir.name, seq_len=seq_len)
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        step = record.get("step")
        if step is None:
            continue
        if record.get("consumed_samples") is not None:
            curves.samples_at[step] = record["consumed_samples"]
        for key, _ in PANELS:
            if isinstance(record.get(key), (int, float)):
                curves.steps.setdefault(key, []).append(step)
                curves.values.setdefault(key, []).append(float(record[key]))
    return curves


def names_for(run_dirs: list[str]) -> list[str]:
    """Legend labels: the directory names, or the paths as given where two names would collide."""
    names = [Path(r).resolve().name for r in run_dirs]
    return [n if names.count(n) == 1 else str(r) for n, r in zip(names, run_dirs)]


def plot(runs: list[Curves], output: str | Path, *, dpi: int = 100):
    """Draw `runs` into the PNG `output`; returns the matplotlib Figure (tests count its lines)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 7), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(PANELS))
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for col, (key, title) in enumerate(PANELS):
        for row, along in enumerate(("step", "tokens")):
            ax = axes[row][col]
            for run, colour in zip(runs, colours):
                if not run.steps.get(key):
                    continue
                x = run.steps[key] if along == "step" else run.tokens(key)
                ax.plot(x, run.values[key], color=colour, label=run.name,
                        marker="o" if key == "val_loss" and len(x) < 30 else None, markersize=3)
            ax.set_title(title if row == 0 else f"{title} vs tokens", fontsize=10)
            ax.set_xlabel(along)
            ax.grid(alpha=0.3)
            if key == "lr":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axes[0][0].legend(fontsize=8)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    tmp.replace(output)  # atomic: a reader never sees half a PNG
    return fig
