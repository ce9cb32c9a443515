# pulsetrace task runner: the README and CI call these targets, nothing else.
#   make demo   build and run the demo service (a messaging app under pulsetrace-run gunicorn,
#               a load generator, the live page) until Ctrl-C; DEMO_SECONDS=N stops it after N s
#   make test   build, lint, Rust tests (with loom), Python tests, the abi3 wheel on
#               CPython 3.10, 3.11 and 3.13, quick benchmarks
#   make bench-full   the full benchmark suite (a few minutes)

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CARGO ?= cargo
export PATH := $(CURDIR)/$(VENV)/bin:$(HOME)/.cargo/bin:$(PATH):/usr/sbin:/sbin

RUST_SOURCES := $(shell find rust -name '*.rs' -o -name Cargo.toml) rust/py/hot_symbols.txt Cargo.toml Cargo.lock pyproject.toml

.PHONY: all demo test build lint rust-test loom py-test abi3-check bench bench-gate bench-full clean system-deps jaeger

# Debian packages the tests run for real: Redis, PostgreSQL, MariaDB (SQL
# integrations), RabbitMQ (messaging integrations), wrk (the overhead benchmark), Chromium
# (the live page's browser test, driven by Playwright). Installed once, when missing.
DEB_PACKAGES := redis-server postgresql mariadb-server rabbitmq-server wrk prometheus prometheus-alertmanager valgrind chromium
system-deps:
	@if ! command -v redis-server >/dev/null || ! command -v mariadbd >/dev/null \
	    || ! command -v wrk >/dev/null || ! command -v rabbitmq-server >/dev/null || ! command -v promtool >/dev/null \
	    || ! command -v prometheus-alertmanager >/dev/null || ! command -v valgrind >/dev/null \
	    || ! command -v chromium >/dev/null \
	    || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
	  echo "installing $(DEB_PACKAGES)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(DEB_PACKAGES) >/dev/null; \
	fi

all: test

$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

# The extension, built in release mode into the virtual environment.
$(VENV)/.built: $(VENV)/.installed $(RUST_SOURCES)
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(VENV)/bin/maturin develop --release --quiet
	touch $@

build: $(VENV)/.built

demo: build
	$(PY) examples/demo_service/run.py

# mypy --strict checks the package ([tool.mypy] in pyproject.toml); stubtest
# checks _native.pyi against the built extension (so lint needs the build).
lint: $(VENV)/.built
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(VENV)/bin/ruff check python tests benchmarks examples scripts
	$(VENV)/bin/ruff format --check python tests benchmarks examples scripts
	$(PY) -m mypy --strict
	$(PY) -m mypy.stubtest pulsetrace._native --allowlist scripts/stubtest_allowlist.txt

rust-test: system-deps
	$(CARGO) test --locked -p pulsetrace-core
	$(CARGO) test --locked -p pulsetrace-py --no-default-features --lib

# Model-check the lock-free histogram with loom (its own target folder, so
# the --cfg loom build does not invalidate the normal one).
loom:
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom $(CARGO) test --locked --release -p pulsetrace-core --test loom_histogram

# Jaeger v2 for tests/e2e/test_jaeger.py, built from its Go module (pinned
# in scripts/peers/jaeger) once, into ~/.cache/pulsetrace/bin; needs Go.
jaeger:
	scripts/peers/jaeger/build.sh >/dev/null

py-test: build system-deps jaeger
	$(PY) -m pytest -q

# The abi3 wheel (the extension declares some CPython functions itself)
# installed and exercised on the oldest and newest CPython it claims and on
# the development one, when this machine has them (pyenv's or on PATH); each
# one missing is reported, not counted as passed.
ABI3_PYTHONS := 3.10 3.11 3.13
abi3-check: $(VENV)/.installed
	rm -rf target/abi3-wheel && $(VENV)/bin/maturin build --release --quiet -o target/abi3-wheel
	@for v in $(ABI3_PYTHONS); do \
	  py=$$(ls -d $(HOME)/.pyenv/versions/$$v.*/bin/python$$v 2>/dev/null | tail -1); \
	  [ -n "$$py" ] || py=$$(command -v python$$v); \
	  if [ -z "$$py" ] || ! $$py -c pass 2>/dev/null; then \
	    echo "abi3-check: NOT RUN on CPython $$v (not installed here)"; continue; fi; \
	  rm -rf target/abi3-$$v && $$py -m venv target/abi3-$$v && \
	  target/abi3-$$v/bin/pip install -q --disable-pip-version-check target/abi3-wheel/*.whl && \
	  (cd target && abi3-$$v/bin/python ../scripts/abi3_smoke.py) || exit 1; \
	done

bench: build system-deps
	$(PY) benchmarks/run_all.py --quick

# Instructions per span and per Flask request counted by callgrind, against
# benchmarks/gate/baseline.json: fails on more than 10% growth.
bench-gate: build system-deps
	$(PY) benchmarks/gate/run.py

bench-full: build
	$(PY) benchmarks/run_all.py --full
	$(CARGO) bench -p pulsetrace-core

test: build lint rust-test loom py-test abi3-check bench bench-gate

clean:
	rm -rf $(VENV) target
