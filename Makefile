# poolwire: `make run` (real sources), `make demo` (simulator), `make test`, `make bench [ONLY=service] [RUNS=3]`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
NODE_STAMP := node_modules/.installed-stamp

.PHONY: install node-deps run demo test lint bench soak clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# The compiled core (shared/compiled.py): rebuilt here when its sources changed; pure Python where
# there is no C compiler.
install: $(STAMP)
	@$(BIN)/python -m shared.compiled build

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
	$(BIN)/python -m bench $(if $(ONLY),--only $(ONLY)) $(if $(RUNS),--runs $(RUNS))

# The demo pipeline at production scale, sampled every minute: bench/soak.json and bench/soak.png.
# Not part of `make test`. SMOKE=1: 3 minutes.
ASSETS  ?= 2000
EVENTS  ?= 10000
MINUTES ?= 30
soak: install node-deps
	$(BIN)/python -m pip install -q -e '.[dev,soak]'
	$(BIN)/python -m bench._soak --assets $(ASSETS) --events-per-s $(EVENTS) --minutes $(MINUTES) $(if $(SMOKE),--smoke)

# The image of deploy/Dockerfile, built with podman when installed, else docker. `make image` starts
# from BASE and installs from the package index, or from WHEELHOUSE (a directory of wheels in the
# repository); its build stage starts from BUILD_BASE (BASE by default), where the compiled core is
# built if a C compiler is there or apt can install one. `make image-local` needs neither an image
# registry nor the index in the build: Debian bases made here by mmdebstrap (`make base-image`, kept
# once built: the runtime's, and the build stage's with gcc and the Python headers) and the wheels
# of this host's Python 3.11, the base's (`make wheelhouse`). podman reads deploy/podman/containers.conf.
ENGINE       ?= $(if $(shell command -v podman 2>/dev/null),podman,docker)
IMAGE        ?= poolwire:latest
BASE         ?= python:3.11-slim
BUILD_BASE   ?= $(BASE)
WHEELHOUSE   ?=
LOCAL_BASE   ?= localhost/poolwire-base:bookworm-1
LOCAL_BUILD_BASE ?= localhost/poolwire-build-base:bookworm-1
BASE_PACKAGES    := python3,python3-venv,python3-pip,python-is-python3,passwd
BUILD_PACKAGES   := $(BASE_PACKAGES),gcc,libc6-dev,python3-dev
WHEEL_PYTHON ?=
PODMAN_CONF  ?= $(CURDIR)/deploy/podman/containers.conf
ENGINE_ENV   := $(if $(filter podman,$(notdir $(ENGINE))),CONTAINERS_CONF=$(PODMAN_CONF))
WHEEL_STAMP  := build/wheelhouse/.for-$(subst /,_,$(subst :,_,$(LOCAL_BASE)))

.PHONY: image image-local base-image wheelhouse

image:
	$(ENGINE_ENV) $(ENGINE) build -f deploy/Dockerfile --build-arg BASE=$(BASE) \
	  --build-arg BUILD_BASE=$(BUILD_BASE) --build-arg WHEELHOUSE=$(WHEELHOUSE) -t $(IMAGE) .

image-local: base-image wheelhouse
	$(MAKE) image BASE=$(LOCAL_BASE) BUILD_BASE=$(LOCAL_BUILD_BASE) WHEELHOUSE=build/wheelhouse

# $(call debian_base,IMAGE,PACKAGES): a minimal bookworm with PACKAGES, unless IMAGE exists. Bump an
# image's tag when its package list changes. The tarball is written first: a failed mmdebstrap must
# not leave a truncated base behind.
define debian_base
	@$(ENGINE_ENV) $(ENGINE) image inspect $(1) >/dev/null 2>&1 || { \
	  echo "building $(1) with mmdebstrap" && mkdir -p build && \
	  mmdebstrap --quiet --variant=minbase --include=$(2) \
	    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
	    --dpkgopt='path-exclude=/usr/share/locale/*' bookworm build/base.tar && \
	  $(ENGINE_ENV) $(ENGINE) import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
	    --change 'ENV LANG=C.UTF-8' build/base.tar $(1); \
	  status=$$?; rm -f build/base.tar; exit $$status; }
endef

base-image:
	$(call debian_base,$(LOCAL_BASE),$(BASE_PACKAGES))
	$(call debian_base,$(LOCAL_BUILD_BASE),$(BUILD_PACKAGES))

# The project's runtime dependencies, build backend and the compiled core's build tools (the
# `compile` extra) as wheels for LOCAL_BASE (the project itself is built in the image). pip picks
# dependencies by the Python it runs on (markers such as python_full_version < "3.11.3"), so the
# wheels are made by a Python of exactly the base's version: WHEEL_PYTHON, else the venv's, else
# python3 (on Debian bookworm, /usr/bin/python3 is the base's).
$(WHEEL_STAMP): pyproject.toml | base-image
	@version='import platform; print(platform.python_version())'; \
	want=$$($(ENGINE_ENV) $(ENGINE) run --rm --network none $(LOCAL_BASE) python3 -c "$$version") || exit 1; \
	py=; for p in $(WHEEL_PYTHON) $(BIN)/python python3 /usr/bin/python3; do \
	  if [ "$$($$p -c "$$version" 2>/dev/null)" = "$$want" ] && $$p -m pip --version >/dev/null 2>&1; then py=$$p; break; fi; \
	done; \
	[ -n "$$py" ] || { echo "wheelhouse: no Python $$want with pip here, the base's (set WHEEL_PYTHON)"; exit 1; }; \
	set -x; rm -rf build/wheelhouse && mkdir -p build/wheelhouse && \
	$$py -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); \
	  print(*p["project"]["dependencies"], *p["build-system"]["requires"], \
	  *p["project"]["optional-dependencies"]["compile"], sep="\n")' > build/wheelhouse.txt && \
	$$py -m pip wheel -q --wheel-dir build/wheelhouse -r build/wheelhouse.txt && touch $@

wheelhouse: $(WHEEL_STAMP)

clean:
	-test -x $(BIN)/python && $(BIN)/python -m shared.compiled clean
	rm -rf $(VENV) node_modules data bench/results.json
