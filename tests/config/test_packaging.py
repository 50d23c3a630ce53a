"""Installed (non-editable) copies find every config group: pyproject ships each conf/ directory."""

import tomllib

from helpers import REPO


def test_every_conf_group_is_installed():
    data_files = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    shipped = {target: globs for target, globs in data_files.items() if target.startswith("share/gpt/conf")}
    conf = REPO / "conf"
    groups = ["conf"] + sorted(str(d.relative_to(REPO)) for d in conf.rglob("*") if d.is_dir() and any(d.glob("*.yaml")))
    for group in groups:
        target = "share/gpt/" + group
        assert shipped.get(target) == [f"{group}/*.yaml"], f"add {target!r} = [\"{group}/*.yaml\"] to pyproject.toml"
