# The two commands of the README: `make demo` and `make test` (and `make docs`). All install first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch goes in first: on a machine without CUDA this is the CPU wheel; a bare `torch`
# requirement resolved by pip later could pull a multi-GB CUDA build instead.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
DEMO_DATA ?= data/stdlib
# Test files run on this many pytest workers at once (pytest-xdist; one file per worker at a time, so
# the runs a file's tests share stay in one process). Most tests wait on one-process subprocesses:
# two workers keep a 2-core machine busy (one thread each: OMP_NUM_THREADS=1).
TEST_WORKERS ?= 2

.PHONY: install demo test test-fast docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: install
	test -f $(DEMO_DATA)/metadata.json || $(BIN)/gpt-preprocess input=stdlib output=$(DEMO_DATA) tokenizer.kind=byte
	$(BIN)/gpt-pretrain experiment=demo data.path=$(DEMO_DATA)
	$(BIN)/gpt-generate checkpoint=runs/demo prompt="def " max_new_tokens=300 temperature=0.8 top_k=40
	$(BIN)/gpt-plot runs/demo output=runs/demo/curves.png

test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not distributed and not slurm and not docker"

# The manual in docs/ as a site in site/; --strict fails on a broken link or anchor, or a page missing from nav.
docs: install
	$(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) runs data site .pytest_cache
