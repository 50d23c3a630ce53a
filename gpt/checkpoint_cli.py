"""gpt-checkpoint: inspect, verify or convert a checkpoint (no process group, no DeepSpeed)."""

import sys

from gpt.cli import run_command

COMMANDS = ("inspect", "verify", "convert")
USAGE = """
usage: gpt-checkpoint inspect checkpoint=<run.dir|checkpoint dir>     summary as JSON on stdout
       gpt-checkpoint verify  checkpoint=<...>                        checksum of every file, tensor index
       gpt-checkpoint convert checkpoint=<...> output=<dir> tensor=N [weights_only=true]

Any checkpoint resumes at any (tensor, pipeline, data, ZeRO) layout directly; convert re-splits the
files for tensor=N offline (one file per tensor rank: the fastest load at that size) and can drop
the optimizer state.
"""


def run(cfg) -> int:
    import json

    from gpt.checkpoint import tools
    from gpt.errors import ConfigError

    if cfg.command not in COMMANDS:
        raise ConfigError(f"command={cfg.command} is not one of {'|'.join(COMMANDS)} (gpt-checkpoint inspect checkpoint=...)")
    if not cfg.checkpoint:
        raise ConfigError(f"checkpoint is required: gpt-checkpoint {cfg.command} checkpoint=<run.dir|checkpoint dir>")
    if cfg.command == "inspect":
        print(json.dumps(tools.inspect(cfg.checkpoint), indent=2))
    elif cfg.command == "verify":
        print(json.dumps(tools.verify(cfg.checkpoint), indent=2))
    else:
        if not cfg.output:
            raise ConfigError("output is required: gpt-checkpoint convert checkpoint=... output=<dir> tensor=N")
        print(tools.convert(cfg.checkpoint, cfg.output, tensor=cfg.tensor, weights_only=cfg.weights_only,
                            overwrite=cfg.overwrite))
    return 0


def main(argv=None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:  # `gpt-checkpoint inspect ...` reads better than command=inspect
        args = [f"command={args[0]}", *args[1:]]
    sys.exit(run_command("gpt-checkpoint", "checkpoint", run, USAGE, args))


if __name__ == "__main__":
    main()
