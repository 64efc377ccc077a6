# edged: `make run` (dev daemon), `make test` (whole suite) and `make fuzz` (the long fuzz run). All set up
# what they need first. `make install` / `make uninstall` put edged on this machine as a service
# (cross/install.sh).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= config/edged.toml
DESTDIR ?=
# Debian packages, by what needs them. Running: Python's venv, and what builds systemd-python (it has no
# wheels); the committed .wasm files are all the functions need.
DEB_RUN := python3-venv libsystemd-dev pkg-config gcc python3-dev
# Rebuilding the functions: the wasm32-wasi Rust toolchain and crates (~250 MiB).
DEB_FUNCTIONS := rustc cargo libstd-rust-dev-wasm32 librust-image-dev
# The tests rebuild the functions, and run mosquitto (openssl makes its TLS test certificates) and the
# dashboard in headless Chromium (selenium drives it through Debian's chromedriver).
DEB_TEST := $(DEB_RUN) $(DEB_FUNCTIONS) mosquitto openssl chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP_RUN := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test

.PHONY: setup deb-run deb-functions deb-test run test fuzz lint typecheck check functions bench bench-quick cross-bundle \
	cross-test install uninstall clean

# apt-get install the packages of $(1) that are missing.
define deb_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
endef

deb-run:
	$(call deb_install,$(DEB_RUN))

deb-functions:
	$(call deb_install,$(DEB_FUNCTIONS))

deb-test:
	$(call deb_install,$(DEB_TEST))

# The dev venv: what running needs, then the test and dev tools on top for the targets that use them.
$(STAMP_RUN): pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[litert]'
	@touch $@

$(STAMP_TEST): $(STAMP_RUN)
	$(PY) -m pip install -q -e '.[test,dev,litert]'
	@touch $@

setup: deb-test $(STAMP_TEST)

run: deb-run $(STAMP_RUN)
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

functions: deb-functions
	functions/build.sh

# Every benchmark in one go (bench/report.py, ~30-60 min): bench/REPORT.md and its plots in bench/plots/.
# `make bench-quick`: a subset with short runs (under 2 minutes) into build/bench-quick/, a check before
# committing that leaves the committed report alone. BENCH_ARGS: e.g. --only classify,start.
bench: setup
	$(PY) bench/report.py $(BENCH_ARGS)

bench-quick: setup
	$(PY) bench/report.py --quick $(BENCH_ARGS)

# Into /opt/edged, /etc/edged and /etc/systemd/system (under DESTDIR when given); INSTALL_ARGS=--no-venv
# lays out everything but the venv.
install:
	DESTDIR="$(DESTDIR)" $(if $(DESTDIR),,$(SUDO)) cross/install.sh install $(INSTALL_ARGS)

uninstall:
	DESTDIR="$(DESTDIR)" $(if $(DESTDIR),,$(SUDO)) cross/install.sh uninstall

# aarch64: the install bundle, and the tests run on it in an emulated arm64 Debian (cross/README.md).
cross-bundle: $(STAMP_RUN)
	cross/bundle.sh

cross-test: $(STAMP_RUN)
	$(SUDO) cross/emulated_test.sh

clean:
	rm -rf $(VENV) state build
