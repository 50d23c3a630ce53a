"""gpt-plot: training curves of one or several runs (loss, validation loss, learning rate, tokens/s) as a PNG."""

import sys

from gpt.cli import run_command

USAGE = """
usage: gpt-plot <run.dir> [<run.dir> ...] [output=curves.png] [dpi=100]

Draws training loss, validation loss, learning rate and tokens/s against steps and against training
tokens, one line per run (e.g. to compare sweep trials on a machine without a browser), from each
run.dir's metrics.jsonl.
"""


def run(cfg) -> int:
    from gpt import log
    from gpt.errors import ConfigError
    from gpt.trainer.curves import names_for, plot, read_run

    if not cfg.runs:
        raise ConfigError("name at least one run.dir: gpt-plot runs/a [runs/b ...] output=curves.png")
    runs = [read_run(r, name) for r, name in zip(cfg.runs, names_for(cfg.runs))]
    plot(runs, cfg.output, dpi=cfg.dpi)
    log.get("plot").info("wrote %s (%d run(s))", cfg.output, len(runs))
    return 0


def to_overrides(argv: list[str]) -> list[str]:
    """Positional run.dirs -> runs=[...]; key=value and options pass through."""
    dirs = [a for a in argv if "=" not in a and not a.startswith("-")]
    rest = [a for a in argv if a not in dirs]
    return rest + ([f"runs=[{','.join(repr(d) for d in dirs)}]"] if dirs else [])


def main(argv=None) -> None:
    sys.exit(run_command("gpt-plot", "plot", run, USAGE, to_overrides(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
