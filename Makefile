# edged: `make run` (dev daemon), `make test` (whole suite) and `make fuzz` (the long fuzz run). All set up what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= config/edged.toml
# Debian packages: the wasm32-wasi Rust toolchain and crates for the functions, mosquitto (and openssl
# for its TLS test certificates) for the MQTT tests, libsystemd headers for systemd-python, systemd for
# unit checks, chromium for the dashboard test.
DEB_PACKAGES := rustc cargo libstd-rust-dev-wasm32 librust-image-dev mosquitto openssl libsystemd-dev \
	pkg-config gcc python3-dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.installed

.PHONY: setup deb venv run test fuzz lint typecheck check functions bench cross-bundle cross-test clean

setup: deb $(STAMP)

deb:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev,litert]'
	@touch $@

run: setup
	$(VENV)/bin/edged run --config $(CONFIG)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# The long fuzz run: FUZZ_EXAMPLES inputs for each fuzz test (image ingest, HTTP requests, the random guest
# calling every host import); the default, 340000 x 3, is over 1,000,000 in all. `make test` runs a short,
# derandomized sample of each. -p no:logging: pytest would keep every log record of the run.
FUZZ_EXAMPLES ?= 340000
FUZZ_TESTS := tests/test_fuzz_images.py tests/test_fuzz_http.py tests/test_fuzz_imports.py

fuzz: setup
	EDGED_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider -p no:logging -s \
		$(wildcard $(FUZZ_TESTS)) $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check edged tests bench

typecheck: setup
	$(VENV)/bin/mypy

check: lint typecheck test

functions: deb
	functions/build.sh

bench: setup
	$(PY) bench/pool_bench.py
	$(PY) bench/classify_bench.py
	$(PY) bench/mqtt_bench.py
	$(PY) bench/outbox_bench.py

# aarch64: the install bundle, and the tests run on it in an emulated arm64 Debian (cross/README.md).
cross-bundle: setup
	cross/bundle.sh

cross-test: setup
	$(SUDO) cross/emulated_test.sh

clean:
	rm -rf $(VENV) state build
