# poolwire: `make run` (real sources), `make demo` (simulator), `make test`, `make bench [ONLY=service]`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
NODE_STAMP := node_modules/.installed-stamp

.PHONY: install node-deps run demo test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Real contracts and a local EVM node for chain tests and the demo (npm registry only).
$(NODE_STAMP): package.json package-lock.json examples/node/package.json examples/node/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  npm ci --no-audit --no-fund --loglevel=error && \
	  npm ci --prefix examples/node --no-audit --no-fund --loglevel=error && touch $(NODE_STAMP); \
	else echo "npm not found: chain tests and the Node.js consumer test will fail (.ci/run installs it)"; fi

node-deps: $(NODE_STAMP)

# honcho runs each Procfile line in a shell; the venv goes first on PATH so `python` is ours.
# shared.foreground gives honcho the terminal: Ctrl-C stops the pipeline and make exits 0.
run: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m shared.foreground $(BIN)/honcho -f Procfile start

demo: install node-deps
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m shared.foreground $(BIN)/honcho -f Procfile.demo start

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: install node-deps lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install node-deps
	$(BIN)/python -m bench $(if $(ONLY),--only $(ONLY))

clean:
	rm -rf $(VENV) node_modules data bench/results.json
