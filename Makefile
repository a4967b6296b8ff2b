# Two entry points on a fresh machine:
#   make demo   set up, then classify the shipped sample (outputs + screenshot in demo_out/)
#   make test   set up, then lint (ruff) and run the test suite (what CI runs)
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: setup sysdeps demo test bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch==2.13.0 first: a local CPU wheel; plain `torch` would pull GBs of CUDA.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	@touch $(STAMP)

# System packages the GUI tests need (a virtual X display and Qt's xcb libraries).
sysdeps:
	@if ! command -v Xvfb >/dev/null 2>&1 || ! ldconfig -p | grep -q libxkbcommon-x11; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $(APT_PKGS) >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq $(APT_PKGS) >/dev/null; fi; \
	fi

APT_PKGS := xvfb libegl1 libgl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 \
            libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 \
            libxcb-cursor0 libdbus-1-3 libfontconfig1

setup: $(STAMP) sysdeps

# The screenshot needs a display: a virtual one (Xvfb) when none is set.
XRUN := $(if $(DISPLAY),,xvfb-run -a -s "-screen 0 1600x1000x24")

demo: setup
	$(BIN)/napari-uam classify --sample --out demo_out --overwrite
	$(XRUN) $(BIN)/python -m napari_uam.demo --out demo_out

# Lint and format check first (seconds), then the suite.
test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/pipeline_bench.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
