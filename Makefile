# Set-up commands. `make test` and `make demo` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench venv clean-venv chromium

venv: $(STAMP)

# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build (see ENVIRONMENT.md).
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[all,test]'
	touch $(STAMP)

test: $(STAMP) chromium
	$(PY) -m pytest -q

# The HTML report is tested in a real headless browser: Debian's chromium (a downloaded browser does not run here).
# Idempotent: installs only when no chromium is on the PATH (sudo when not root).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium; }

# The main job on a built-in tiny Llama, offline: reports go to a new folder under demo-out/.
demo: $(STAMP)
	$(VENV)/bin/parity demo --out demo-out

# Benchmarks (BENCHMARKS.md): the bench extra adds the peers' code (Polygraphy), matplotlib for the plots and the
# profilers; installed here only, so `make test` does not need them.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) -m bench

clean-venv:
	rm -rf $(VENV)
