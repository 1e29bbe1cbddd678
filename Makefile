# `make demo` and `make test` do all set-up themselves, into a local virtual environment.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export CUDA_HOME ?= /usr/local/cuda
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0+PTX
# make test fails if the kernels do not compile: CI proves they build.
export ATSS_REQUIRE_EXTENSION ?= 1
export MAX_JOBS ?= 2

TORCH_PKGS := torch==2.14.1 torchvision==0.29.1
DEPS := ninja pybind11 typer rich pycocotools faster-coco-eval numpy opencv-python-headless pillow matplotlib pytest pytest-xdist onnx onnxruntime onnxscript
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null)

.PHONY: install test demo bench clean

# uv when it can (torch's 5.5 GB unpack on every core: ~40 s instead of pip's ~100 s), pip otherwise;
# the same versions either way (tools/install_deps.py).
$(VENV)/.deps: pyproject.toml tools/install_deps.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) tools/install_deps.py --python $(PY) $(TORCH_PKGS) $(DEPS)
	touch $@

# The extension is rebuilt in place whenever a kernel source changes.
$(VENV)/.ext: $(VENV)/.deps setup.py atss_cli/build_flags.py $(CSRC)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	$(PY) -c "from atss_cli.ops import extension; print(extension.describe())"
	touch $@

# `make demo` on a machine without a GPU builds the CPU kernels only: the demo runs on the CPU,
# and compiling the CUDA kernels is most of the set-up time. `make install` and `make test` build both.
$(VENV)/.ext-cpu: $(VENV)/.deps setup.py atss_cli/build_flags.py $(CSRC)
	rm -f $(VENV)/.ext
	ATSS_NO_CUDA=1 $(PIP) install -q --no-build-isolation --no-deps -e .
	$(PY) -c "from atss_cli.ops import extension; print(extension.describe())"
	touch $@

install: $(VENV)/.ext

# The suite on TEST_WORKERS pytest-xdist workers, a test file to a worker (its module fixtures
# made once); most tests wait on one-threaded CLI processes, so 2 workers keep 2 cores busy.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

demo: $(VENV)/.deps
	@if [ -f $(VENV)/.ext ] || nvidia-smi -L >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory install; else $(MAKE) --no-print-directory $(VENV)/.ext-cpu; fi
	$(VENV)/bin/atss demo

bench: install
	$(VENV)/bin/atss bench assigner

clean:
	rm -rf build *.egg-info atss_cli/_C*.so
