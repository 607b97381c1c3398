# The two commands a newcomer types: `make up` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Third-party peers from npm that the tests start on loopback (panva's oidc-provider,
# nodemailer's smtp-server), pinned by tests/peers/package-lock.json. Pure JavaScript:
# --ignore-scripts, nothing builds at install.
PEERS := tests/peers/node_modules/.package-lock.json

.PHONY: up test test-unit test-integration test-system lint typecheck check bench clean system-deps \
	lock lock-upgrade audit mutate
CHROMIUM ?= /usr/bin/chromium

# Installs exactly the locked set (hashes checked), then the project itself without
# resolving anything. `pip check` catches a lock older than pyproject.toml: run `make lock`.
$(STAMP): pyproject.toml requirements-dev.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check || { echo "the lock lags pyproject.toml: make lock"; exit 1; }
	touch $(STAMP)

# Lock files (uv pip compile, with hashes, for Python 3.11 on every platform):
#   requirements.lock      runtime + uvloop: the Containerfile's image
#   requirements-dev.lock  runtime + embedded + uvloop + dev: make test / make up / CI
#   requirements-tools.lock  uv and pip-audit themselves (requirements-tools.in)
# After changing dependencies in pyproject.toml: `make lock` (keeps every other pin as it
# was). On a merge conflict in a lock: take either side, then `make lock`.
# `make lock-upgrade` moves every pin to the newest release allowed.
TOOLS_VENV ?= .venv-tools
TOOLS := $(TOOLS_VENV)/.installed
UV_COMPILE = $(TOOLS_VENV)/bin/uv pip compile --universal --python-version 3.11 \
	--generate-hashes --quiet --custom-compile-command "make lock" $(LOCK_ARGS)
$(TOOLS): requirements-tools.lock
	test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install --quiet --require-hashes -r requirements-tools.lock
	touch $@

lock: $(TOOLS)
	$(UV_COMPILE) pyproject.toml --extra uvloop -o requirements.lock
	$(UV_COMPILE) pyproject.toml --extra embedded --extra uvloop --extra dev \
		--constraints requirements.lock -o requirements-dev.lock
	$(UV_COMPILE) requirements-tools.in -o requirements-tools.lock

lock-upgrade:
	$(MAKE) lock LOCK_ARGS=--upgrade

# Known vulnerabilities in the locked sets (pip-audit); .ci/audit.py says when the
# vulnerability service cannot be reached instead of passing silently.
audit: $(TOOLS)
	$(TOOLS_VENV)/bin/python .ci/audit.py requirements.lock requirements-dev.lock

up: $(STAMP)
	$(BIN)/dispatch-engine up

# Every tier; the tiers alone (docs/testing.md): unit starts no server and installs nothing
# beyond the venv, integration adds the private PostgreSQL and Redis, system the rest.
test: $(STAMP) system-deps $(PEERS)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m unit $(PYTEST_ARGS)

test-integration: $(STAMP)
	$(BIN)/python -m pytest -q -m integration $(PYTEST_ARGS)

test-system: $(STAMP) system-deps $(PEERS)
	$(BIN)/python -m pytest -q -m system $(PYTEST_ARGS)

$(PEERS): tests/peers/package.json tests/peers/package-lock.json
	npm ci --prefix tests/peers --ignore-scripts --no-audit --no-fund

# Tools the tests drive as real peers, from Debian's packages: chromium (dashboard), nginx (a
# load balancer in front of API processes), docker-compose (validates docker-compose.yml),
# postfix (a private relay instance the SMTP tests send through, and the MTA whose DSNs the
# bounce tests read), dnsmasq (a DNS server for `sender check-dns`), dovecot-imapd (the bounce
# mailbox the IMAP feedback reader reads).
# Installed when missing and we may (root with apt-get); otherwise those tests skip locally.
SYSTEM_TOOLS := $(CHROMIUM):chromium /usr/sbin/nginx:nginx /usr/bin/docker-compose:docker-compose \
	/usr/sbin/postfix:postfix /usr/sbin/dnsmasq:dnsmasq-base /usr/sbin/dovecot:dovecot-imapd
system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
		[ -x "$${pair%%:*}" ] || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing$$missing"; apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check dispatch_engine tests bench tools
	$(BIN)/ruff format --check dispatch_engine tests bench tools

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

# Benchmarks run in their own venv, beside SAQ and arq (see docs/performance.md).
BENCH_VENV ?= .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -e '.[embedded,uvloop,bench]'
	touch $@

# BullMQ for the peers harness (bench/queue_peers.py), pinned by bench/bullmq/package-lock.json.
# --ignore-scripts: nothing builds at install (msgpackr's native add-on ships prebuilt).
BULLMQ := bench/bullmq/node_modules/.package-lock.json
$(BULLMQ): bench/bullmq/package.json bench/bullmq/package-lock.json
	npm ci --prefix bench/bullmq --ignore-scripts --no-audit --no-fund

bench: $(BENCH_VENV)/.installed $(BULLMQ) system-deps
	$(BENCH_VENV)/bin/python bench/queue_peers.py
	$(BENCH_VENV)/bin/python bench/e2e.py

# Mutation testing (docs/testing.md): cosmic-ray over the core modules, curated Lua mutants.
# Its own venv; nice -n 19 so it yields the cores. `make mutate MUTATE="recipients lua"`.
MUTATE_VENV ?= .venv-mutate
MUTATE ?=
$(MUTATE_VENV)/.installed: pyproject.toml
	test -x $(MUTATE_VENV)/bin/python || $(PYTHON) -m venv $(MUTATE_VENV)
	$(MUTATE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MUTATE_VENV)/bin/python -m pip install --quiet -e '.[embedded,dev,mutate]'
	touch $@

mutate: $(MUTATE_VENV)/.installed system-deps $(PEERS)
	nice -n 19 $(MUTATE_VENV)/bin/python tools/mutate/run.py $(MUTATE)

clean:
	rm -rf $(VENV) $(TOOLS_VENV) $(MUTATE_VENV) build dist .pytest_cache .mypy_cache .ruff_cache
