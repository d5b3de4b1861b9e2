# Two commands a new user needs: `make demo` and `make test`. Each bootstraps .venv (idempotently).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.xr0-installed
PLUGINS := $(sort $(wildcard plugins/*/pyproject.toml))
# In-tree plugins are installed editable so the entry-point group `xr0.plugins` finds them.
PLUGIN_DIRS := $(patsubst %/pyproject.toml,%,$(PLUGINS))

.PHONY: demo test install mutants clean-venv

demo: $(STAMP)
	$(PY) -m xr0.cli demo

test: $(STAMP)
	$(PY) -m pytest

install: $(STAMP)

# On demand, never in CI: mutate the critical modules and check their tests notice (tools/mutants.toml).
# `make mutants ONLY="executor rtc"` runs some targets; a full run takes about an hour on 2 busy cores.
mutants: $(STAMP)
	$(PY) tools/mutants.py $(ONLY)

$(STAMP): pyproject.toml $(PLUGINS) Makefile
	@# Keep a torch that is already there (a user's CUDA build): in .venv, or in the system Python,
	@# which the venv then sees through --system-site-packages. Otherwise take the CPU wheel on disk.
	@if [ ! -x $(PY) ]; then \
	  if python3 -c "import torch" 2>/dev/null; then python3 -m venv --system-site-packages $(VENV); \
	  else python3 -m venv $(VENV); fi; fi
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[dev]" $(addprefix -e ,$(PLUGIN_DIRS))
	@# openpi-client declares numpy<2 although its protocol code runs on numpy 2: install without deps.
	$(PIP) install --no-deps "openpi-client==0.1.2"
	@touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
