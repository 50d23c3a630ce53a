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
# the runs a file's tests share stay in one process). Most tests wait on subprocesses starting, and
# the SLURM and Docker tests on their schedulers: three workers (one thread each: OMP_NUM_THREADS=1)
# keep a 2-core machine busy (fresh clone, 2026-12-01: 17 min 2 s with 3, 18 min 2 s with 2).
TEST_WORKERS ?= 3

.PHONY: install demo test test-fast docs gpu-wheels gpu-check clean

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

# On a GPU machine (Python 3.12, torch 2.11, CUDA 13: benchmarks/gpu_check.py): the packages it lacks
# install from .whl/ (made here by `make gpu-wheels`, where pip reaches the registry), then the check
# runs: the gpu-marked tests and the tokens/s + MFU table, at most 8 minutes on one H200.
GPU_PYTHON ?= python3
GPU_WHEELS := megatron-core==0.16.1 hydra-core==1.3.8 omegaconf==2.3.1 hjson==3.1.0 pydantic==2.14.4 \
	pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
GPU_SDISTS := deepspeed==0.19.8 antlr4-python3-runtime==4.9.3

gpu-wheels: install
	mkdir -p .whl
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(GPU_WHEELS)
	$(BIN)/python -m pip wheel -q --no-deps -w .whl $(GPU_SDISTS)

gpu-check:
	@if ls .whl/*.whl >/dev/null 2>&1; then $(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile \
		--no-cache-dir --upgrade --target /tmp/site .whl/*.whl; fi
	PYTHONPATH=/tmp/site:$(CURDIR) PYTHONUNBUFFERED=1 $(GPU_PYTHON) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) runs data site .pytest_cache
