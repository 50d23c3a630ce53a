"""The shared shape of every entry point: parse overrides, compose the typed config, run.

User errors (`GptError`) become one line on stderr and exit status 2; `--cfg` prints the resolved
config (secrets redacted); `--help` lists the config groups; `-m` runs a sweep (gpt/sweep.py).
"""

import atexit
import gc
import os
import sys
from typing import Callable, List, Optional

from gpt.errors import GptError

# At exit CPython's last cyclic garbage collection walks every object torch, DeepSpeed and megatron
# made (0.3-1 s of every command's and every rank's exit on a CPU). Registered at import, before the
# libraries' own handlers, this runs after them (atexit is last in, first out): objects are frozen
# out of that collection, and reference counting still frees them as the interpreter shuts down.
atexit.register(gc.freeze)


def run_command(prog: str, config_name: str, run: Callable, usage: str, argv: Optional[List[str]] = None) -> int:
    from gpt import log
    from gpt.config import loader

    log.setup()
    try:
        cli = loader.parse_cli(prog, argv, config_name, usage)
        if cli.multirun:
            from gpt.sweep import sweep

            return sweep(prog, config_name, cli.overrides)
        if cli.print_cfg:
            from gpt.config.secrets import redact

            print(loader.to_yaml(redact(loader.compose_container(config_name, cli.overrides))), end="")
            return 0
        result = run(loader.compose(config_name, cli.overrides))
        return int(result or 0)
    except GptError as e:
        if os.environ.get("RANK", "0") == "0" or not e.every_rank:
            print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130

