"""Free text and paths: taken from the command line exactly as typed, kept literal through OmegaConf.

Hydra's override grammar gives meaning to `(`, `,`, `[`, quotes, `#`, `=`, `$`, `\\` and newlines, so a
prompt like `def fib(` or a path like `my data, v2/notes (1).txt` cannot pass through it unquoted.
Fields declared with `text()` (prompts, stop strings, paths, record field names, templates) skip that
grammar: `key=value` sets them to exactly `value` (the bare word `null` unsets a field that may be
null). A list-valued text field takes one item per `key=value` (repeat the key for several); a value
in brackets is read as Hydra's list syntax, `stop=['a','b']`. Every other key keeps Hydra's grammar
(interpolations, sweeps, lists).

OmegaConf reads `${...}` in any string as an interpolation; `literal` escapes a string so that
OmegaConf yields it unchanged. Every string that reaches OmegaConf from outside the config files
(a text value from the command line, a config saved in a checkpoint) goes through it: such strings
are data, never resolved (`structured`).
"""

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable

from gpt.errors import ConfigError

TEXT = {"text": True}


def text(default: Any = None, *, factory: Any = None) -> Any:
    """A dataclass field whose command-line value is taken verbatim (see the module docstring)."""
    if factory is not None:
        return field(default_factory=factory, metadata=TEXT)
    return field(default=default, metadata=TEXT)


@dataclass(frozen=True)
class TextKey:
    key: str
    is_list: bool  # List[str]: repeated `key=value` add items
    may_be_list: bool  # Any (a path, or a list of paths): one `key=value` is a string, several a list
    nullable: bool  # Optional: `key=null` unsets it


def text_keys(schema: type, prefix: str = "") -> dict[str, TextKey]:
    """Dotted names of the text fields of a config dataclass, nested sections included."""
    out: dict[str, TextKey] = {}
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        hint = hints[f.name]
        key = prefix + f.name
        args = typing.get_args(hint)
        inner = next((a for a in args if a is not type(None)), hint) if typing.get_origin(hint) is typing.Union else hint
        if dataclasses.is_dataclass(inner):
            out.update(text_keys(inner, key + "."))
        elif f.metadata.get("text"):
            out[key] = TextKey(key=key, is_list=typing.get_origin(inner) in (list, typing.List),
                               may_be_list=inner is Any, nullable=type(None) in args or inner is Any)
    return out


_INTERPOLATION_START = re.compile(r"(\\*)\$\{")


def literal(s: str) -> str:
    """`s` escaped so that OmegaConf resolves it to exactly `s` (`${` -> `\\${`, backslashes before it doubled)."""
    return _INTERPOLATION_START.sub(lambda m: "\\" * (2 * len(m.group(1)) + 1) + "${", s)


def literal_tree(obj: Any) -> Any:
    """A JSON-like object with every string (not dict keys) made `literal`."""
    if isinstance(obj, str):
        return literal(obj)
    if isinstance(obj, dict):
        return {k: literal_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [literal_tree(v) for v in obj]
    return obj


def structured(schema: type, data: dict) -> Any:
    """`schema`'s dataclass filled from a plain dict (e.g. a checkpoint's saved config), type-checked by
    OmegaConf, with no `${...}` in it ever resolved: strings from files are data."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), literal_tree(data)))


def hydra_quoted(value: str) -> str:
    """`value` as a quoted Hydra override value that composes to exactly `value`."""
    from hydra.core.override_parser.types import Quote, QuotedString

    return QuotedString(text=literal(value), quote=Quote.single).with_quotes()


def shell_word(arg: str) -> str:
    """How to type `arg` in a POSIX shell (bash/zsh for `$'...'`), as readably as it allows."""
    if not re.search(r'["$`\\!\n\t]', arg):
        return f'"{arg}"'
    if not re.search(r"['\n\t]", arg):
        return f"'{arg}'"
    escaped = arg.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\t", "\\t")
    return f"$'{escaped}'"


def shown(value: str) -> str:
    """A value inside a one-line message: newlines and tabs written as \\n and \\t."""
    return value.replace("\n", "\\n").replace("\t", "\\t")


def _hydra_list(key: str, value: str) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_override(f"{key}={value}").value()
    except Exception:
        parsed = None
    if not isinstance(parsed, list) or any(isinstance(v, (list, dict)) or v is None for v in parsed):
        raise ConfigError(f"{key}={value}: a value in brackets is read as a list of strings (Hydra's syntax, e.g. "
                          f"{shell_word(key + '=[' + chr(39) + 'a,b' + chr(39) + ',c]')}); to give one item exactly as "
                          f"typed, repeat the key: {key}=<item> {key}=<item>")
    return [v if isinstance(v, str) else str(v) for v in parsed]


def hydra_overrides(overrides: Iterable[str], keys: dict[str, TextKey]) -> list[str]:
    """The command line with every text key's value turned into a Hydra override that composes to it
    exactly (other overrides unchanged, in order; a text key given several times becomes one override
    where its first occurrence was)."""
    out: list[str] = []
    values: dict[str, Any] = {}
    slot: dict[str, tuple[int, str]] = {}
    for o in overrides:
        raw_key, sep, value = o.partition("=")
        name = raw_key.lstrip("+")
        k = keys.get(name)
        if not sep or k is None:
            out.append(o)
            continue
        if name not in slot:
            slot[name] = (len(out), raw_key)
            out.append("")  # filled below
        if k.nullable and value == "null":
            values[name] = None
            continue
        bracket = (k.is_list or k.may_be_list) and value.startswith("[") and value.endswith("]")
        if not (k.is_list or k.may_be_list):
            values[name] = value
            continue
        items = _hydra_list(name, value) if bracket else [value]
        previous = values.get(name)
        if previous is None:
            values[name] = items if (k.is_list or bracket) else value
        else:
            values[name] = (previous if isinstance(previous, list) else [previous]) + items
    for name, (i, raw_key) in slot.items():
        v = values[name]
        if v is None:
            rendered = "null"
        elif isinstance(v, list):
            rendered = "[" + ",".join(hydra_quoted(x) for x in v) + "]"
        else:
            rendered = hydra_quoted(v)
        out[i] = f"{raw_key}={rendered}"
    return out
