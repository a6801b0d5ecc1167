# Set-up commands. `make test` and `make demo` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

LOCK := requirements/test.txt

.PHONY: test test-latest test-oldest demo bench bench-gpu venv lock clean-venv chromium system-packages

venv: $(STAMP)

# The tested environment: every package at the exact version of the lock (the CPU build of torch included), then
# the project itself without resolving again. `make lock` regenerates the lock from setup.cfg's ranges.
$(STAMP): $(LOCK) setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

test: $(STAMP) system-packages
	$(PY) -m pytest -q

# Debian packages the tests use: chromium (the HTML report is tested in a real headless browser; a downloaded
# browser does not run here), and fusefat, dosfstools and fuse (a real FAT filesystem, which has no hard links, for
# the shared folder's refusal tests). Idempotent: installs only the commands missing from the PATH (sudo when not
# root); apt-get update runs only when something is missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SYSTEM_PACKAGES := chromium:chromium fusefat:fusefat mkfs.vfat:dosfstools fusermount:fuse
system-packages:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do command -v "$${pair%%:*}" >/dev/null 2>&1 || \
		PATH="$$PATH:/sbin:/usr/sbin" command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		$(SUDO) apt-get install -y -qq --no-install-recommends $$missing; fi

chromium: system-packages

# The main job on a built-in tiny Llama, offline: reports go to a new folder under demo-out/.
demo: $(STAMP)
	$(VENV)/bin/parity demo --out demo-out

# Regenerate the lock: pip-tools' resolver over setup.cfg's ranges (extras all and test) and requirements/pins.in,
# each package at the newest version that resolves. Run in a venv of its own, so the tested one holds only the lock.
TOOLS_VENV := .venv-tools
lock:
	test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install --quiet --upgrade pip 'pip-tools>=7.4'
	$(TOOLS_VENV)/bin/pip-compile --quiet --upgrade --strip-extras --no-emit-index-url --no-emit-find-links \
		--extra all --extra test -o $(LOCK) setup.cfg requirements/pins.in

# For maintainers, not CI: the whole suite in a new venv with the newest release of every package that the ranges
# admit (what a user who installs today gets), torch included: a CUDA build of ~5.5 GB where pip finds one (on
# these machines pip caps torch at the 2.14.1 that lies on disk). `pip freeze` of the run is kept in the venv.
LATEST_VENV := .venv-latest
test-latest: system-packages
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[all,test]'
	$(LATEST_VENV)/bin/python -m pip freeze --exclude-editable > $(LATEST_VENV)/freeze.txt
	$(LATEST_VENV)/bin/python -m pytest -q -p no:cacheprovider

# For maintainers, not CI: the whole suite with every direct dependency at the lower bound of its range in setup.cfg
# (requirements/oldest.txt pins them; tests/test_packaging.py keeps the two equal), so the bounds are tested ones.
OLDEST_VENV := .venv-oldest
test-oldest: system-packages
	rm -rf $(OLDEST_VENV)
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST_VENV)/bin/python -m pip install --quiet -c requirements/oldest.txt -e '.[all,test]'
	$(OLDEST_VENV)/bin/python -m pip freeze --exclude-editable > $(OLDEST_VENV)/freeze.txt
	$(OLDEST_VENV)/bin/python -m pytest -q -p no:cacheprovider

# Benchmarks (BENCHMARKS.md): the bench extra adds the peers' code (Polygraphy, msprobe, torchlens), matplotlib for
# the plots and the profilers; installed here only, so `make test` does not need them. The lock constrains them:
# a peer that asked for another torch or numpy would change what the tests ran on.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) setup.cfg
	$(PY) -m pip install --quiet -c $(LOCK) -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) -m bench

# The accelerator paths that a CPU-only machine cannot run (BENCHMARKS.md, "GPU check"): on a host with CUDA, run
# it with the interpreter that has that host's CUDA torch (GPU_PYTHON=...), not .venv, whose lock is the CPU build.
# Without CUDA it says so and exits 0.
GPU_PYTHON ?= python3
bench-gpu:
	$(GPU_PYTHON) -m bench.gpu_check

clean-venv:
	rm -rf $(VENV)
