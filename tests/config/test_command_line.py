"""Free text and paths on the command line arrive exactly as typed (issue 11.4); values Hydra cannot
read are one line naming the key and showing how to write them."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO, env_for_subprocess, run_module

from gpt.config import compose
from gpt.config.loader import schema
from gpt.config.text import text_keys

# What one level of shell quoting hands us: Hydra's grammar chokes on every one of these.
NASTY = ["def fib(", "my data, v2/notes (1).txt", "a, b", "[x]", "{a: 1}", "it's \"quoted\"", "# = $HOME $ {}",
         "${oc.env:HOME}", "\\${oc.env:HOME}", "${oc.env:", "back\\slash\\", "two\nlines\n", "tab\there",
         "range(1,4)", "x=y", "~name", "+key", "", "null?", "100%", "ünïcødé →"]


def test_every_text_key_of_every_command_is_declared():
    """The keys issue 11.4 names (and their kin) are text keys of each command that has them."""
    expect = {
        "generate": {"prompt", "stop", "checkpoint", "prompt_file"},
        "preprocess": {"input", "output", "text_key", "tokenizer.path", "tokenizer.eod_token", "sft.user_prefix",
                       "sft.prompt_key"},
        "pretrain": {"data.path", "data.val_path", "run.dir", "model.init_from"},
        "finetune": {"data.path", "run.dir", "model.init_from"},
        "eval": {"checkpoint", "data.path", "data.val_path"},
        "export": {"checkpoint", "output"},
        "checkpoint": {"checkpoint", "output"},
    }
    for command, keys in expect.items():
        assert keys <= set(text_keys(schema(command))), command


@pytest.mark.parametrize("kind", ["str", "optional", "list", "any"])
def test_text_overrides_reach_omegaconf_exactly(kind):
    """Every NASTY value through the text path (config.text -> Hydra's parser -> OmegaConf), per kind of key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from gpt.config.text import TextKey, hydra_overrides

    key = TextKey("k", is_list=kind == "list", may_be_list=kind == "any", nullable=kind in ("optional", "any"))
    parser = OverridesParser.create()
    for v in NASTY:
        if kind in ("list", "any") and v == "[x]":
            continue  # brackets are Hydra's list syntax on list keys (tested below)
        (override,) = hydra_overrides([f"k={v}"], {"k": key})
        value = parser.parse_override(override).value()
        got = OmegaConf.to_container(OmegaConf.create({"k": value}), resolve=True)["k"]
        assert got == ([v] if kind == "list" else v), (v, override)


def test_text_values_compose_exactly_as_typed():
    """Through Hydra's compose into the typed config: str, Optional[str], List[str] and Any keys."""
    for r in (0, 7, 14):
        values = {k: NASTY[(i + r) % len(NASTY)] for i, k in enumerate(["prompt", "checkpoint", "prompt_file"])}
        cfg = compose("generate", [f"{k}={v}" for k, v in values.items()])
        assert {k: getattr(cfg, k) for k in values} == values
    plain = [v for v in NASTY if v != "[x]"]
    assert compose("generate", [f"stop={v}" for v in plain]).stop == plain  # one item per occurrence
    cfg = compose("preprocess", [f"input={v}" for v in plain] + [f"output={NASTY[1]}", f"tokenizer.eod_token={NASTY[5]}"])
    assert (cfg.input, cfg.output, cfg.tokenizer.eod_token) == (plain, NASTY[1], NASTY[5])
    assert compose("preprocess", ["input=my data, v2/notes (1).txt"]).input == "my data, v2/notes (1).txt"
    # Brackets are Hydra's list syntax on list keys, and `null` unsets a key that may be null.
    assert compose("generate", ["stop=[a,'b, c']", "stop=[x]", "checkpoint=null", "prompt=null"]).stop == ["a", "b, c", "x"]
    cfg = compose("generate", ["checkpoint=null", "prompt=null"])
    assert cfg.checkpoint is None and cfg.prompt == "null"  # text where a key must be a string


def test_finetune_checkpoint_alias_is_text():
    cfg = compose("finetune", ["checkpoint=runs/base (copy), v2", "data.path=data/a,b", "run.dir=runs/${x}"])
    assert (cfg.model.init_from, cfg.data.path, cfg.run.dir) == ("runs/base (copy), v2", "data/a,b", "runs/${x}")


COMMANDS = {  # command module -> (config name, text keys to fill)
    "gpt.generate": ["checkpoint", "prompt", "stop", "prompt_file"],
    "gpt.preprocess": ["input", "output", "text_key", "tokenizer.path", "tokenizer.eod_token", "sft.user_prefix"],
    "gpt.pretrain": ["data.path", "data.val_path", "run.dir", "model.init_from"],
    "gpt.finetune": ["checkpoint", "data.path", "run.dir"],
    "gpt.evaluate": ["checkpoint", "data.path"],
    "gpt.export": ["checkpoint", "output"],
    "gpt.checkpoint_cli": ["checkpoint", "output"],
}


@pytest.mark.parametrize("module", COMMANDS)
def test_installed_commands_print_text_as_typed(module):
    """`python -m gpt.<cmd> ... --cfg`: each text key gets one of the nastiest values, printed back exactly."""
    keys = COMMANDS[module]
    hard = ["def fib(", "my data, v2/notes (1).txt", "it's \"quoted\" # = $x", "${oc.env:NOPE_NOT_SET}",
            "two\nlines", "\\${oc.env:HOME}\\"]
    values = {k: hard[i % len(hard)] for i, k in enumerate(keys)}
    proc = run_module(module, [f"{k}={v}" for k, v in values.items()] + ["--cfg"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    for k, v in values.items():
        node = printed
        for part in ({"checkpoint": "model.init_from"}.get(k, k) if module == "gpt.finetune" else k).split("."):
            node = node[part]
        assert node == ([v] if k == "stop" else v), (k, node)


@pytest.fixture(scope="module")
def console_script():
    found = shutil.which("gpt-generate", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("gpt-generate is not installed beside this python (make install)")
    return found


def test_readme_prompt_generates(base_run, console_script):
    """The README's `gpt-generate checkpoint=runs/demo prompt="def fib(" ...` (the console script)."""
    proc = subprocess.run([console_script, f"checkpoint={base_run}", "prompt=def fib(", "max_new_tokens=5",
                           "temperature=0", "device=cpu"], capture_output=True, text=True, timeout=300,
                          env=env_for_subprocess(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("def fib(") and len(proc.stdout) > len("def fib(")


def test_prompt_and_prompt_file_from_stdin(base_run, monkeypatch, capsys):
    """prompt=- is the whole of stdin, exactly; prompt_file=- reads prompts (jsonl) from stdin (gpt-generate's main)."""
    import io

    from gpt.generate import main

    prompt = 'def f(a, b="x, y"):  # ${oc.env:HOME} [1]\n    return {a: b}\n'
    monkeypatch.setattr(sys, "stdin", io.StringIO(prompt))
    with pytest.raises(SystemExit) as e:
        main([f"checkpoint={base_run}", "prompt=-", "max_new_tokens=3", "temperature=0", "device=cpu"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith(prompt)
    lines = json.dumps({"prompt": "a (b"}) + "\n" + json.dumps({"prompt": "c,\nd"}) + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    with pytest.raises(SystemExit) as e:
        main([f"checkpoint={base_run}", "prompt_file=-", "max_new_tokens=2", "temperature=0", "device=cpu"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and [json.loads(x)["prompt"] for x in out.splitlines()] == ["a (b", "c,\nd"]


def test_preprocess_paths_with_commas_and_parentheses(tmp_path):
    src = tmp_path / "my data, v2" / "notes (1).txt"
    src.parent.mkdir()
    src.write_text("one two\n\nthree four\n")
    out = tmp_path / "out [v2], #1 ${x}"
    proc = run_module("gpt.preprocess", [f"input={src}", f"output={out}", "tokenizer.kind=byte"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "metadata.json").read_text())["num_documents"] == 2


# Values of keys that keep Hydra's grammar: each refusal names the key and shows a quoting that works.
UNREADABLE = ["a(b", "a#b", "two\nlines", "it's", "1e-3)", "a,b", "x=y", "[1,2"]


@pytest.mark.parametrize("value", UNREADABLE)
def test_values_hydra_cannot_read_are_one_line_with_the_fix(value, capsys):
    from gpt.pretrain import main

    with pytest.raises(SystemExit) as e:
        main([f"model.name={value}", "--cfg"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("gpt-pretrain: error: model.name=") and "None" not in err
    suggestion = err.rstrip("\n").rsplit(" ", 1)[-1] if "quote it: " in err else \
        err.split("quote it to mean one value, ")[1].split(", or run")[0]
    # The suggestion, typed into a shell, gives a command line that composes to the value.
    argv = subprocess.run(["bash", "-c", f"printf '%s\\0' {suggestion}"], capture_output=True, text=True,
                          check=True).stdout.split("\0")[:-1]
    assert compose("pretrain", argv).model.name == value


@pytest.mark.parametrize("override, message", [
    ("logging.wandb.name=${oc.env:", r"logging\.wandb\.name=\$\{oc\.env:: not a complete interpolation"),
    ("optim.lr=${oc.env:NOPE_NOT_SET}", r"optim\.lr: the environment variable NOPE_NOT_SET is not set"),
    ("model.name=${nope.key}", r"model\.name: \$\{nope\.key\} names no config key"),
    ("model.name=a${b", r"model\.name=a\$\{b: not a complete interpolation"),
    ("nokey", r"'nokey' is not a key=value override"),
    ("--frobnicate", r"unknown option '--frobnicate'"),
])
def test_interpolation_errors_name_the_key(override, message, capsys):
    import re

    from gpt.pretrain import main

    with pytest.raises(SystemExit) as e:
        main([override, "--cfg"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and re.search(message, err), err
    assert "error: None" not in err and "b'" not in err
