"""Composes a typed config from conf/ plus command-line overrides, with one-line errors.

We use Hydra's compose API rather than `@hydra.main`: the same config groups, defaults lists and
override grammar (`model=gpt2-124m parallel.tensor=2 +deepspeed.foo=1`), but no working-directory
changes, no `outputs/` folders, and errors we can turn into a single line that names the key.
"""

import os
import re
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence

from gpt.errors import ConfigError


def conf_dir() -> Path:
    """conf/ of the source tree (editable installs, checkouts), else the installed copy."""
    env = os.environ.get("GPT_CONF_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[2] / "conf"
    if here.is_dir():
        return here
    installed = Path(sys.prefix) / "share" / "gpt" / "conf"
    if installed.is_dir():
        return installed
    raise ConfigError(f"cannot find the conf/ directory (looked in {here} and {installed}); set GPT_CONF_DIR")


def compose(config_name: str, overrides: Sequence[str] = ()) -> Any:
    """The resolved config as its dataclass instance (e.g. TrainingConfig)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(compose_dictconfig(config_name, overrides))


def compose_dictconfig(config_name: str, overrides: Sequence[str] = ()):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from gpt.config import store

    store.register()
    overrides = with_aliases(config_name, overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name=config_name):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
        # Resolve interpolations now so that a bad one fails here, not deep in a run.
        from omegaconf import OmegaConf

        OmegaConf.resolve(cfg)
        return cfg
    except ConfigError:
        raise
    except Exception as e:  # Hydra/OmegaConf errors: make them one line that names the key.
        raise ConfigError(one_line(e)) from None
    finally:
        GlobalHydra.instance().clear()


def with_aliases(config_name: str, overrides: Sequence[str]) -> list[str]:
    """`key=value` overrides whose key is an alias of this command (store.ALIASES) renamed to the real key."""
    from gpt.config.store import ALIASES

    aliases = ALIASES.get(config_name, {})
    out = []
    for o in overrides:
        key, sep, value = o.partition("=")
        out.append(f"{aliases[key]}={value}" if sep and key in aliases else o)
    return out


_KEY_NOT_IN = re.compile(r"Key '([^']+)' not in '(\w+)'")


def one_line(e: BaseException) -> str:
    """Condense a Hydra/OmegaConf exception chain into `key: problem (fix)`."""
    chain = []
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    root = chain[-1]
    text = " ".join(str(x) for x in chain)
    full_key = re.search(r"full_key: ([\w.\[\]-]+)", text)
    key = full_key.group(1) if full_key else None
    m = _KEY_NOT_IN.search(text)
    if m:
        key = key or m.group(1)
        return f"unknown config key '{key}' (check the spelling; `--help` lists the config groups, `--cfg` prints every key)"
    m = re.search(r"Could not override '([^']+)'", text)
    override = m.group(1) if m else None
    first = str(root).strip().splitlines()[0] if str(root).strip() else type(root).__name__
    m = re.search(r"Value '([^']*)' (?:of type '\w+' )?could not be converted to (\w+)", text)
    if m:
        return f"{key or override}={m.group(1)}: expected {m.group(2).lower()}"
    m = re.search(r"Could not find '([\w-]+)/([^']+)'", text)
    if m:
        group = conf_dir() / m.group(1)
        options = "|".join(sorted(f.stem for f in group.glob("*.yaml")))
        return f"{m.group(1)}={m.group(2)}: no such preset in {group}; choose one of {options}"
    if key or override:
        return f"{key or override}: {first}"
    return first


def parse_cli(prog: str, argv: Optional[List[str]], config_name: str, usage: str) -> tuple[List[str], bool]:
    """Split argv into Hydra overrides; handle --help. Returns (overrides, print_config)."""
    args = list(sys.argv[1:] if argv is None else argv)
    print_cfg = False
    overrides = []
    for a in args:
        if a in ("-h", "--help"):
            print(usage.strip())
            print(f"\nConfig: {conf_dir() / (config_name + '.yaml')}")
            groups = sorted(p.name for p in conf_dir().iterdir() if p.is_dir())
            for g in groups:
                opts = sorted(f.stem for f in (conf_dir() / g).glob("*.yaml"))
                print(f"  {g}=" + "|".join(opts))
            print("Override any key as key=value (e.g. train.steps=100); `--cfg` prints the resolved config.")
            raise SystemExit(0)
        if a in ("--cfg", "--cfg=job", "-c"):
            print_cfg = True
            continue
        if a.startswith("-"):
            raise ConfigError(f"unknown option {a!r}: {prog} takes Hydra overrides like key=value (see --help)")
        overrides.append(a)
    return overrides, print_cfg
