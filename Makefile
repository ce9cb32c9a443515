# pulsetrace task runner: the README and CI call these targets, nothing else.
#   make demo   build and run the demo (an instrumented program that prints what it recorded)
#   make test   build, lint, Rust tests (with loom), Python tests, quick benchmarks
#   make bench-full   the full benchmark suite (a few minutes)

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CARGO ?= cargo
export PATH := $(CURDIR)/$(VENV)/bin:$(HOME)/.cargo/bin:$(PATH):/usr/sbin:/sbin

RUST_SOURCES := $(shell find rust -name '*.rs' -o -name Cargo.toml) Cargo.toml Cargo.lock pyproject.toml

.PHONY: all demo test build lint rust-test loom py-test bench bench-full clean system-deps

# Debian packages the tests run for real: Redis, PostgreSQL, MariaDB (SQL
# integrations), wrk (the overhead benchmark). Installed once, when missing.
DEB_PACKAGES := redis-server postgresql mariadb-server wrk prometheus prometheus-alertmanager
system-deps:
	@if ! command -v redis-server >/dev/null || ! command -v mariadbd >/dev/null \
	    || ! command -v wrk >/dev/null || ! command -v promtool >/dev/null \
	    || ! command -v prometheus-alertmanager >/dev/null \
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
	$(PY) examples/demo.py

lint: $(VENV)/.installed
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(VENV)/bin/ruff check python tests benchmarks examples scripts
	$(VENV)/bin/ruff format --check python tests benchmarks examples scripts

rust-test: system-deps
	$(CARGO) test --locked -p pulsetrace-core
	$(CARGO) test --locked -p pulsetrace-py --no-default-features --lib

# Model-check the lock-free histogram with loom (its own target folder, so
# the --cfg loom build does not invalidate the normal one).
loom:
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom $(CARGO) test --locked --release -p pulsetrace-core --test loom_histogram

py-test: build system-deps
	$(PY) -m pytest -q

bench: build system-deps
	$(PY) benchmarks/run_all.py --quick

bench-full: build
	$(PY) benchmarks/run_all.py --full
	$(CARGO) bench -p pulsetrace-core

test: build lint rust-test loom py-test bench

clean:
	rm -rf $(VENV) target
