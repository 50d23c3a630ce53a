"""Composes a typed config from conf/ plus command-line overrides, with one-line errors.

We use Hydra's compose API rather than `@hydra.main`: the same config groups, defaults lists and
override grammar (`model=gpt2-124m parallel.tensor=2 +deepspeed.foo=1`), but no working-directory
changes, no `outputs/` folders, and errors we can turn into a single line that names the key.
"""

import os
import re
import sys
from dataclasses import dataclass
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


def schema(config_name: str) -> type:
    """The dataclass a command's conf/<name>.yaml extends (store.SCHEMAS)."""
    from gpt.config.store import SCHEMAS

    found = SCHEMAS.get(f"{config_name}_schema")
    if found is None:
        raise ConfigError(f"no config schema for {config_name!r}; choose one of "
                          f"{'|'.join(n.removesuffix('_schema') for n in SCHEMAS)}")
    return found


def compose(config_name: str, overrides: Sequence[str] = ()) -> Any:
    """The resolved config as its dataclass instance (e.g. TrainingConfig)."""
    from gpt.config.text import structured

    return structured(schema(config_name), compose_container(config_name, overrides))


def hydra_overrides(config_name: str, overrides: Sequence[str], *, sweep: bool = False) -> list[str]:
    """The command line as Hydra overrides: aliases renamed, free-text keys (config.text) made literal,
    and every other override checked on its own so that a value Hydra cannot read is named."""
    from gpt.config import text

    out = text.hydra_overrides(with_aliases(config_name, overrides), text.text_keys(schema(config_name)))
    for o in out:
        check_override(o, sweep=sweep)
    return out


def compose_container(config_name: str, overrides: Sequence[str] = ()) -> dict:
    """conf/<config_name>.yaml + overrides composed by Hydra, interpolations resolved once, as plain
    Python (dicts, lists, scalars). Secrets interpolated from the environment are registered for
    redaction (secrets.mask)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from gpt.config import secrets, store

    store.register()
    overrides = hydra_overrides(config_name, overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name=config_name):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
        secrets.mask_interpolated(OmegaConf.to_container(cfg, resolve=False))
        # Resolve now, once, so that a bad interpolation fails here, not deep in a run.
        return OmegaConf.to_container(cfg, resolve=True)
    except ConfigError:
        raise
    except Exception as e:  # Hydra/OmegaConf errors: make them one line that names the key.
        raise ConfigError(one_line(e)) from None
    finally:
        GlobalHydra.instance().clear()


def check_override(override: str, *, sweep: bool = False) -> None:
    """One override read by Hydra's grammar; a value it cannot take is one line naming the key and
    showing how to write it (quoted)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from gpt.config.text import hydra_quoted, shell_word, shown

    key, sep, value = override.partition("=")
    if not sep:
        if override.startswith("~"):
            return
        raise ConfigError(f"{shown(override)!r} is not a key=value override (e.g. train.steps=100; `--help` lists the keys)")
    try:
        parsed = OverridesParser.create().parse_override(override)
    except Exception as e:
        reason = _grammar_reason(e)
        if "${" in value:
            raise ConfigError(f"{key}={shown(value)}: not a complete interpolation ({reason}); write ${{oc.env:NAME}} or "
                              f"${{oc.env:NAME,default}}, or to mean the text itself: "
                              f"{shell_word(key + '=' + hydra_quoted(value))}") from None
        raise ConfigError(f"{key}={shown(value)}: Hydra's override grammar cannot read this value ({reason}); quote it: "
                          f"{shell_word(key + '=' + hydra_quoted(value))}") from None
    if parsed.is_sweep_override() and not sweep:
        raise ConfigError(f"{key}={shown(value)} is a sweep (Hydra reads a comma, range() or interval() as several values): "
                          f"quote it to mean one value, {shell_word(key + '=' + hydra_quoted(value))}, or run every "
                          f"value as its own run with -m (see docs/training.md, sweeps)")


def with_aliases(config_name: str, overrides: Sequence[str]) -> list[str]:
    """`key=value` overrides whose key is an alias of this command (store.ALIASES) renamed to the real key."""
    from gpt.config.store import ALIASES

    aliases = ALIASES.get(config_name, {})
    out = []
    for o in overrides:
        key, sep, value = o.partition("=")
        out.append(f"{aliases[key]}={value}" if sep and key in aliases else o)
    return out


_EXPECTING = re.compile(r" expecting (\{[^}]*\}|\S+)")  # ANTLR's list of tokens it wanted: noise to users
_KEY_NOT_IN = re.compile(r"Key '([^']+)' not in '(\w+)'")


def one_line(e: BaseException) -> str:
    """Condense a Hydra/OmegaConf exception chain into `key: problem (fix)`; never empty or "None"."""
    chain = []
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    messages = [m for m in (_first_line(x) for x in chain) if m]
    text = " ".join(str(x) for x in chain)
    full_key = re.search(r"full_key: ([\w.\[\]-]+)", text)
    key = full_key.group(1) if full_key else None
    m = _KEY_NOT_IN.search(text)
    if m:
        key = key or m.group(1)
        return f"unknown config key '{key}' (check the spelling; `--help` lists the config groups, `--cfg` prints every key)"
    m = re.search(r"Could not override '([^']+)'", text)
    override = m.group(1) if m else None
    first = re.sub(_EXPECTING, "", messages[0]) if messages else type(chain[-1]).__name__
    m = re.search(r"Value '([^']*)' (?:of type '\w+' )?could not be converted to (\w+)", text)
    if m:
        return f"{key or override}={m.group(1)}: expected {m.group(2).lower()}"
    m = re.search(r"Could not find '([\w-]+)/([^']+)'", text)
    if m:
        group = conf_dir() / m.group(1)
        options = "|".join(sorted(f.stem for f in group.glob("*.yaml")))
        return f"{m.group(1)}={m.group(2)}: no such preset in {group}; choose one of {options}"
    m = re.search(r"Environment variable '([^']+)' not found", text)
    if m:
        return (f"{key or override or 'config'}: the environment variable {m.group(1)} is not set; export it, or give "
                f"a default: ${{oc.env:{m.group(1)},default}}")
    m = re.search(r"Interpolation key '([^']+)' not found", text)
    if m:
        return f"{key or override or 'config'}: ${{{m.group(1)}}} names no config key (`--cfg` prints every key)"
    if any(type(x).__name__ == "GrammarParseError" for x in chain):
        return (f"{key or override or 'config'}: cannot read the interpolation in this value ({first}); write "
                f"${{...}} completely, or \\${{...}} for the text itself")
    if key or override:
        return f"{key or override}: {first}"
    return first


def _grammar_reason(e: BaseException) -> str:
    """The parser's own words, without ANTLR's list of expected tokens."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip() and line.strip() != "None"]
    reason = lines[-1] if lines else type(e).__name__
    return re.sub(_EXPECTING, "", reason)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    if not text or text == "None":
        return ""
    return text.splitlines()[0].strip()


@dataclass(frozen=True)
class CommandLine:
    overrides: List[str]
    print_cfg: bool  # --cfg: print the resolved config and exit
    multirun: bool  # -m/--multirun: a sweep, every point its own run


def parse_cli(prog: str, argv: Optional[List[str]], config_name: str, usage: str) -> CommandLine:
    """Split argv into overrides and options; handle --help."""
    args = list(sys.argv[1:] if argv is None else argv)
    print_cfg = multirun = False
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
            print("Paths and free text (prompt=, data.path=, run.dir=, ...) are taken exactly as typed.")
            raise SystemExit(0)
        if a in ("--cfg", "--cfg=job", "-c"):
            print_cfg = True
            continue
        if a in ("-m", "--multirun"):
            multirun = True
            continue
        if a.startswith("-"):
            raise ConfigError(f"unknown option {a!r}: {prog} takes overrides like key=value (see --help)")
        overrides.append(a)
    return CommandLine(overrides=overrides, print_cfg=print_cfg, multirun=multirun)


def to_yaml(container: Any) -> str:
    """Plain containers as YAML, strings exactly as they are (no interpolation syntax added or read)."""
    import yaml

    return yaml.safe_dump(container, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1 << 16)
