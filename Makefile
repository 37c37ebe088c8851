# wqd: build, test and demo targets.
#
#   make test     the test suite (against throwaway RabbitMQ nodes; never the
#                 broker on localhost:5672), without the soak tests (the
#                 3-node cluster test runs in both)
#   make test-unit  the tests that need no broker and no waiting (about 20 s)
#   make test-producers  as root: the Node, Go and shell producers of
#                 docs/publishing.md against a wqd pool
#   make test-rabbitmq4
#   make test-rabbitmq43
#                 the same suite against a RabbitMQ the host's Debian does not
#                 package: test-rabbitmq4 takes 4.0 from Debian trixie on a
#                 Debian 12 host (3.10 from bookworm on a Debian 13 one),
#                 test-rabbitmq43 4.3 from forky. Both are test-rabbitmq-SUITE:
#                 its nodes run in a chroot of a root filesystem built once (as
#                 root, by debootstrap: about a minute, 400 MB) into
#                 .cache/rabbitmq-SUITE and reused (scripts/rabbitmq-rootfs.sh;
#                 delete it to rebuild); WQD_TEST_RABBITMQ_METADATA=khepri runs
#                 4.0 nodes on Khepri (4.3 has nothing else)
#   make test-console  as root (it installs Debian's chromium if missing):
#                 the console in a real browser (tests/test_console_browser.py:
#                 headless Chromium driven by Playwright, pinned in the
#                 browser-test extra; never `playwright install`); it writes
#                 the screenshots in docs/images/console-*.png
#   make demo     the tutorial's five messages through two wqd workers
#   make docs     the documentation site (MkDocs, --strict) into .cache/site;
#                 fails when the generated configuration reference is stale
#   make lint     ruff, version RUFF_VERSION (installed into .venv by this target only;
#                 its configuration, and pytest's, is in pyproject.toml)
#   make soak     the long-running soak tests (-m soak), then test-partitions
#                 (so as root)
#   make test-deploy  as root: the unit under systemd as PID 1 (systemd-nspawn)
#                 and the image under a Docker engine (tests/deploy; caches
#                 under .cache/deploy)
#   make test-partitions  as root: network partitions between a 3-node
#                 cluster and two wqd hosts, each in a network namespace
#                 (tests/partitions; installs Debian's nftables if missing)
#   make bench    the benchmarks (about 25 minutes; BENCH_QUICK=1: a smoke run
#                 of every phase, about 3; PEERS=1 adds Celery and Dramatiq,
#                 installed from bench/requirements-peers.txt into
#                 .cache/bench-peers; BENCH_ARGS: more options of bench/run.py)
#   make bench-publishing  the publishing benchmark (bench/publishing.py:
#                 wqd's publishers against a naive pika loop and plain
#                 aio-pika, with issue 26's targets as PASS/FAIL lines; about
#                 a minute; PEERS=1 as above; BENCH_ARGS: its options, e.g.
#                 BENCH_ARGS='--messages 1000 --rounds 3')
#   make bench-outbox  the outbox relay (bench/outbox.py): rows/s relayed
#                 against publish_many's, and commit-to-handler-start latency
#                 at 500 commits/s, with issue 27's targets as PASS/FAIL lines
#                 (about a minute; BENCH_ARGS: e.g. '--rows 5000 --rounds 1')
#   make clean
#
# Variables: PY (python used to create the venv), VENV, XDIST (pytest processes), PYTEST_ARGS
# (e.g. make test PYTEST_ARGS='-k durability -x').

PY ?= python3
VENV ?= .venv
PYTEST_ARGS ?=
BENCH_ARGS ?=
PEERS ?=
BENCH_QUICK ?=

VENV_PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed
PEERS_VENV := .cache/bench-peers
PEERS_STAMP := $(PEERS_VENV)/.installed
RABBITMQ_SERVER := /usr/lib/rabbitmq/bin/rabbitmq-server
PROMTOOL := /usr/bin/promtool
# The Debian suite whose RabbitMQ differs from the host's (12.x -> trixie, 13.x -> bookworm).
# Debian's PostgreSQL (the outbox tests start their own instances): 15 on Debian 12, 17 on 13.
POSTGRESQL_VERSION := $(if $(filter 13.%,$(shell cat /etc/debian_version 2>/dev/null)),17,15)
OTHER_RABBITMQ_SUITE := $(if $(filter 13.%,$(shell cat /etc/debian_version 2>/dev/null)),bookworm,trixie)
# Pinned: a new ruff release can add checks and fail CI with no change of ours.
RUFF_VERSION := 0.6.9

.PHONY: all venv rabbitmq postgresql promtool deploy-tools docs test test-unit test-console test-producers test-rabbitmq4 test-rabbitmq43 test-deploy test-partitions demo lint soak bench bench-publishing bench-outbox clean

all: test

# --- environment -----------------------------------------------------------

venv: $(VENV_STAMP)

# Reinstalled only when the package metadata changes (the install is
# editable, so code changes need no reinstall).
$(VENV_STAMP): setup.cfg pyproject.toml
	test -x $(VENV_PY) || $(PY) -m venv $(VENV)
	$(VENV_PY) -m pip install --disable-pip-version-check -q -e '.[test,otel]'
	touch $@

# Debian packages the tests need. Installed only if missing, and only as
# root; their services are left stopped (the tests run their own processes).
rabbitmq:
	@bash scripts/ensure-debian-package.sh $(RABBITMQ_SERVER) rabbitmq-server rabbitmq-server

# Any installed version will do (tests/support/postgres.py takes the newest).
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		bash scripts/ensure-debian-package.sh /usr/lib/postgresql/$(POSTGRESQL_VERSION)/bin/initdb postgresql postgresql

promtool:
	@bash scripts/ensure-debian-package.sh $(PROMTOOL) prometheus prometheus

# systemd-analyze, systemd-sysusers (tests/test_systemd.py) and openssl (tests/test_tls.py).
deploy-tools:
	@bash scripts/ensure-debian-package.sh /usr/bin/systemd-analyze systemd
	@bash scripts/ensure-debian-package.sh /usr/bin/openssl openssl

# --- checks ----------------------------------------------------------------

# Four pytest processes, each with its own broker node: the tests mostly
# wait on brokers, daemons and timers (on a 2-core EPYC slower than the one
# that chose three: 9 min 49 s with three, 8 min 22 s with four, cores 85 %
# busy).
XDIST ?= 4

SUITE_PYTEST = $(VENV)/bin/pytest -q -rs -n $(XDIST) -m '(not soak or cluster) and not producers and not browser' tests $(PYTEST_ARGS)

test: venv rabbitmq postgresql promtool deploy-tools
	$(SUITE_PYTEST)

# Root only: the other-language producers of docs/publishing.md (Node's
# amqplib from npm, pinned, into .cache/node-producers; Debian's amqp-tools,
# golang-go and amqp091-go, installed by the tests' fixtures).
test-producers: venv rabbitmq
	@if [ "$$(id -u)" != 0 ]; then echo "make test-producers needs root: it installs Debian's amqp-tools and Go (sudo make test-producers)." >&2; exit 1; fi
	$(VENV)/bin/pytest -q -rs -m producers tests/test_other_languages.py $(PYTEST_ARGS)

# The tests that need no broker (not marked broker: tests/support/fixtures.py)
# and take no seconds each (not marked slow); WQD_TEST_UNIT makes a node
# started anyway an error.
test-unit: venv
	WQD_TEST_UNIT=1 $(VENV)/bin/pytest -q -n 2 -m 'not broker and not slow and not soak and not cluster and not producers and not browser' tests $(PYTEST_ARGS)

# The console in Debian's Chromium (installed if missing, as root only),
# driven by Playwright from the browser-test extra (its own driver, pointed at
# /usr/bin/chromium: no browser download).
test-console: venv rabbitmq
	@bash scripts/ensure-debian-package.sh /usr/bin/chromium chromium
	$(VENV_PY) -m pip install --disable-pip-version-check -q -e '.[test,otel,browser-test]'
	$(VENV)/bin/pytest -q -rs -m browser tests/test_console_browser.py $(PYTEST_ARGS)

# test-rabbitmq-SUITE: the suite against the RabbitMQ of Debian SUITE.
test-rabbitmq-%: venv postgresql promtool deploy-tools
	bash scripts/rabbitmq-rootfs.sh $* .cache/rabbitmq-$* >/dev/null
	WQD_TEST_RABBITMQ_ROOT=$(abspath .cache/rabbitmq-$*) $(SUITE_PYTEST)

test-rabbitmq4: test-rabbitmq-$(OTHER_RABBITMQ_SUITE)

test-rabbitmq43: test-rabbitmq-forky

# Root only: debootstrap, systemd-nspawn and a Docker engine of its own
# (Debian's packages, installed if missing).
test-deploy:
	@if [ "$$(id -u)" != 0 ]; then echo "make test-deploy needs root: it boots a container with systemd-nspawn, runs its own Docker engine and installs Debian packages (sudo make test-deploy)." >&2; exit 1; fi
	@$(MAKE) --no-print-directory venv rabbitmq
	@bash scripts/ensure-debian-package.sh /usr/sbin/debootstrap debootstrap
	@bash scripts/ensure-debian-package.sh /usr/bin/systemd-nspawn systemd-container
	@bash scripts/ensure-debian-package.sh /usr/sbin/dockerd docker.io docker
	$(VENV)/bin/pytest -q tests/deploy $(PYTEST_ARGS)

# Root only: network namespaces, veth pairs and nft rules (all removed at the
# end). Its temporary files go to .run/test-partitions (emptied at each run).
test-partitions:
	@if [ "$$(id -u)" != 0 ]; then echo "make test-partitions needs root: it makes network namespaces, veth pairs and nft rules, and installs Debian packages (sudo make test-partitions)." >&2; exit 1; fi
	@$(MAKE) --no-print-directory venv rabbitmq
	@bash scripts/ensure-debian-package.sh /usr/sbin/nft nftables
	@bash scripts/ensure-debian-package.sh /usr/bin/ip iproute2
	mkdir -p .run
	$(VENV)/bin/pytest -q -rs --basetemp=.run/test-partitions tests/partitions $(PYTEST_ARGS)

soak: venv rabbitmq postgresql promtool
	$(VENV)/bin/pytest -q -rs -m soak tests $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-partitions

# The documentation site (MkDocs, Material theme), built with --strict so that
# a broken link or anchor fails; its tools in a venv of their own, pinned.
DOCS_VENV := .cache/docs-venv
DOCS_STAMP := $(DOCS_VENV)/.installed

$(DOCS_STAMP): docs/requirements.txt
	test -x $(DOCS_VENV)/bin/python || $(PY) -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/pip install --disable-pip-version-check -q -r docs/requirements.txt
	touch $@

docs: $(DOCS_STAMP) venv
	$(VENV_PY) -m wqd.config.docs --check
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs build --strict

lint: venv
	test "$$($(VENV)/bin/ruff --version 2>/dev/null)" = "ruff $(RUFF_VERSION)" || \
		$(VENV_PY) -m pip install --disable-pip-version-check -q ruff==$(RUFF_VERSION)
	$(VENV)/bin/ruff check $(wildcard daemon tests bench)

# --- demo and benchmarks ---------------------------------------------------

demo: venv rabbitmq
	bash scripts/demo.sh

bench: venv rabbitmq $(if $(PEERS),$(PEERS_STAMP))
	$(VENV_PY) -m bench.run $(if $(PEERS),--peers) $(if $(BENCH_QUICK),--quick) $(BENCH_ARGS)

bench-publishing: venv rabbitmq $(if $(PEERS),$(PEERS_STAMP))
	$(VENV_PY) -m bench.publishing $(if $(PEERS),--peers) $(BENCH_ARGS)

bench-outbox: venv rabbitmq postgresql
	$(VENV_PY) -m bench.outbox $(BENCH_ARGS)

# Celery and Dramatiq for `make bench PEERS=1`, in a virtualenv of their own.
$(PEERS_STAMP): bench/requirements-peers.txt
	test -x $(PEERS_VENV)/bin/python || $(PY) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install --disable-pip-version-check -q -r bench/requirements-peers.txt
	touch $@

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache .run
	find . -path ./.git -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
