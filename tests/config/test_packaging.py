"""Installed (non-editable) copies find every config group: pyproject ships each conf/ directory."""

import tomllib

from helpers import REPO


def test_every_conf_group_is_installed():
    data_files = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    shipped = {target: globs for target, globs in data_files.items() if target.startswith("share/gpt/conf")}
    groups = ["conf"] + sorted(f"conf/{d.name}" for d in (REPO / "conf").iterdir() if d.is_dir())
    for group in groups:
        target = "share/gpt/" + group
        assert shipped.get(target) == [f"{group}/*.yaml"], f"add {target!r} = [\"{group}/*.yaml\"] to pyproject.toml"
