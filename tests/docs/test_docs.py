"""The manual builds as a site with `mkdocs build --strict` (what `make docs` runs), and the README's links
point at files that exist: a broken link or anchor, or a page missing from mkdocs.yml's nav, fails here."""

import re
import shutil
import subprocess
import sys

from helpers import REPO


def mkdocs_build(config, site, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], check=False, capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})


def test_docs_build_strict(tmp_path):
    proc = mkdocs_build(REPO / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode == 0, proc.stderr[-4000:]
    for page in ("data", "training", "parallelism", "checkpoints", "launching", "finetuning",
                 "generation-evaluation", "metrics-logging", "choices", "development", "benchmarks"):
        assert (tmp_path / "site" / page / "index.html").is_file(), page


def test_docs_build_fails_on_broken_links_and_orphan_pages(tmp_path):
    """The strict build really is strict: the same tree with a link to a missing page, a link to a missing
    anchor and a page outside nav fails, naming each (every one is a warning of its own, so each alone fails)."""
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    with open(tmp_path / "docs" / "training.md", "a") as f:
        f.write("\n[gone](no-such-page.md) [gone](data.md#no-such-anchor)\n")
    (tmp_path / "docs" / "orphan.md").write_text("# Not in nav\n")
    proc = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site", cwd=tmp_path)
    assert proc.returncode != 0
    for named in ("'no-such-page.md'", "'data.md#no-such-anchor'", "orphan.md"):
        assert named in proc.stderr, proc.stderr[-2000:]


def test_readme_is_a_front_page_whose_links_resolve():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert "make demo" in text and "make test" in text
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert local, "the README links to the docs"
    missing = [t for t in local if not (REPO / t).exists()]
    assert not missing, f"README links to missing files: {missing}"
