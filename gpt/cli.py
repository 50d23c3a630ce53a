"""The shared shape of every entry point: parse overrides, compose the typed config, run.

User errors (`GptError`) become one line on stderr and exit status 2; `--cfg` prints the resolved
config; `--help` lists the config groups.
"""

import os
import sys
from typing import Callable, List, Optional

from gpt.errors import GptError


def run_command(prog: str, config_name: str, run: Callable, usage: str, argv: Optional[List[str]] = None) -> int:
    from gpt import log
    from gpt.config import loader

    log.setup()
    try:
        overrides, print_cfg = loader.parse_cli(prog, argv, config_name, usage)
        dcfg = loader.compose_dictconfig(config_name, overrides)
        if print_cfg:
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(dcfg), end="")
            return 0
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_object(dcfg)
        result = run(cfg)
        return int(result or 0)
    except GptError as e:
        if os.environ.get("RANK", "0") == "0" or not e.every_rank:
            print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130

