# kamleak: everything a fresh machine needs comes from here.
#   make repro   show the issue-4140 leak and its mitigation (the main job)
#   make test    the docs build, unit tests + the real-stack suite (Kamailio + Asterisk)
#   make setup   system packages, venv, Docker engine, images (both run it)

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KAMLEAK := $(VENV)/bin/kamleak
PYTEST_ARGS ?=
# Kamailio on the host: the local-binary path (`--kamailio-bin`, `kamleak check`)
# is tested against Debian's package, as a developer's build would be run.
HOST_KAMAILIO := kamailio kamailio-websocket-modules kamailio-tls-modules kamailio-presence-modules
# A real Prometheus server scrapes `kamleak watch --prometheus` in the tests;
# a real Redis server is the example database explore's shards share.
HOST_TEST := prometheus redis-server

# Kamailio built from upstream source (--kamailio-ref): the offline copy of
# upstream's history beside the checkout when there is one (CI, these
# machines), else kamleak's default, github.com/kamailio/kamailio.
KAMAILIO_SOURCE ?= $(abspath $(wildcard $(CURDIR)/../shared/kamailio-src/kamailio.git.tar.gz))
ifneq ($(KAMAILIO_SOURCE),)
export KAMLEAK_KAMAILIO_SOURCE ?= $(KAMAILIO_SOURCE)
endif

.PHONY: setup venv host-packages images test unit lint-code docs repro bench soak clean matrix agreement reduce-stock
comma := ,

setup: venv host-packages images

$(VENV)/.installed: pyproject.toml
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev,docs]'
	@touch $@

venv: $(VENV)/.installed

# Installs only what is missing, and only as root; otherwise it explains.
host-packages:
	@missing=""; \
	for cmd in debootstrap openssl tcpdump iptables; do command -v $$cmd >/dev/null || missing="$$missing $$cmd"; done; \
	if ! docker info >/dev/null 2>&1 && ! command -v dockerd >/dev/null; then missing="$$missing docker.io"; fi; \
	if [ "$$(id -u)" = 0 ]; then for p in $(HOST_KAMAILIO) $(HOST_TEST); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; fi; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "kamleak: installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "kamleak: missing:$$missing; install them (sudo apt-get install$$missing) or run make as root" >&2; exit 1; \
	  fi; \
	fi

# Starts a private dockerd only where that is the norm: CI, or root on a box
# without systemd (containers, fresh VMs).  Elsewhere it explains.
images: venv host-packages
	@$(KAMLEAK) setup

unit: venv
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

# The code's own lint (ruff, configured in pyproject.toml); `make test` runs it first.
lint-code: venv
	$(VENV)/bin/ruff check .

# The docs site (mkdocs.yml): --strict fails on a broken link or anchor and on a
# page left out of the nav; `make test` builds it before any test runs.
docs: venv
	$(VENV)/bin/mkdocs build --strict --quiet

# The user-facing gate (marker `gate`) fails on leaking versions by design;
# the suite runs it as CI would, in a subprocess (tests/gate/test_gate_as_ci.py).
# Three passes: (1) everything but `serial`, on XDIST workers (most of a gate
# test is waiting out tm's timers, so workers overlap); (2) the `serial` tests
# alone (they look at every container on the engine, or build from source);
# (3) the 4140 verdict matrix (WS, WSS; lint checked against each verdict) on
# upstream builds from source (UPSTREAM_REFS): built once, at their first test,
# and reused (labelled images, ccache volume kamleak-ccache).
# The suite waits out tm's lifetime bound after every early LEAK too: the two
# must agree (tests/gate/matrix.assert_early), else the test errors.
CONFIRM ?= --kamleak-confirm
JUNIT ?= artifacts/junit.xml
UPSTREAM_REFS ?= 5.8.5,master
# and the tests that gate a user's config on them (the stock WebRTC example, unedited)
UPSTREAM_TESTS := tests/gate/test_verdict_matrix.py \
  tests/integration/test_user_config.py::test_the_unedited_webrtc_example_on_upstream_builds
XDIST ?= 3
PARALLEL := $(if $(filter-out 0 1,$(XDIST)),-n $(XDIST))
test: lint-code docs setup
	@mkdir -p $(dir $(JUNIT))
	@rc=0; \
	$(PY) -m pytest tests -m "not gate and not serial" $(PARALLEL) $(CONFIRM) --junitxml=$(JUNIT) \
	  --kamleak-summary=artifacts/verdicts.json $(PYTEST_ARGS) || rc=$$?; \
	$(PY) -m pytest tests -m "not gate and serial" $(CONFIRM) --junitxml=$(basename $(JUNIT))-serial.xml \
	  --kamleak-summary=artifacts/verdicts-serial.json $(PYTEST_ARGS) || rc=$$?; \
	$(PY) -m pytest $(UPSTREAM_TESTS) -m "not gate" --kamailio-ref $(UPSTREAM_REFS) $(PARALLEL) $(CONFIRM) \
	  --junitxml=$(basename $(JUNIT))-upstream.xml --kamleak-summary=artifacts/verdicts-upstream.json $(PYTEST_ARGS) || rc=$$?; \
	$(KAMLEAK) cleanup --check || rc=$$?; exit $$rc

# The long matrix: upstream builds × every scenario's gate test.  One machine:
# `make matrix`; a CI job matrix: `make matrix SHARD=2/4` per job, then
# `kamleak summary merge artifacts/matrix-*.json --table` (docs/builds.md).
MATRIX_REFS ?= 5.8.5,5.8.8,6.0.7,6.1.4,master
MATRIX_TESTS := $(filter-out %/test_gate_as_ci.py %/test_foreign_image.py,$(wildcard tests/gate/test_*.py))
MATRIX_SUMMARY = artifacts/matrix$(if $(SHARD),-$(subst /,of,$(SHARD))).json
matrix: setup
	@mkdir -p artifacts
	@rc=0; $(PY) -m pytest $(MATRIX_TESTS) -m "not gate" --kamailio-ref $(MATRIX_REFS) $(CONFIRM) \
	  $(if $(SHARD),--kamleak-shard $(SHARD)) --kamleak-summary=$(MATRIX_SUMMARY) $(PYTEST_ARGS) || rc=$$?; \
	$(KAMLEAK) summary merge $(MATRIX_SUMMARY) --table; exit $$rc

# The early verdict against the lifetime bound (docs/early-verdict.md: the agreement table):
# RUNS confirmed gate runs per target x variant x transport x disconnect mode.
# make agreement [AGREE_TARGETS=debian:6.0.1,src:5.8.5] [RUNS=20] [AGREE_CONFIG=my.cfg]
AGREE_TARGETS ?= debian:5.6.3,debian:6.0.1,debian:6.1.5,src:5.8.5,src:master
AGREE_VARIANTS ?= pua_dialoginfo,uac_req_send,pua_dialoginfo+send_reply_error,none
AGREE_DISCONNECTS ?= rst,fin,close,rst+advertise
RUNS ?= 20
agreement: setup
	@mkdir -p artifacts
	@$(PY) -m kamleak.scenarios.measure_early $(foreach t,$(subst $(comma), ,$(AGREE_TARGETS)),--target $(t)) \
	  --variant $(if $(AGREE_CONFIG),none,$(AGREE_VARIANTS)) --transport ws,wss --disconnect $(AGREE_DISCONNECTS) \
	  --runs $(RUNS) $(if $(AGREE_CONFIG),--config $(AGREE_CONFIG)) --out artifacts/agreement.json

# make repro: the report of issue 4140 (docs/repro.md): upstream 5.8.5 built from source
# (KAMAILIO_SOURCE; the first run builds it, later runs reuse the image), a WSS client, the
# report's failure path (DISCONNECT=rst+advertise: 477 (477/SL)), Asterisk hanging up on
# command, then send_reply_error() beside it.  Knobs (each overrides one default):
#   VERSION=6.0.1     Debian's package, no build (5.6.3, 6.0.1, 6.1.5); any other VERSION
#                     is an upstream tag or ref built from source.   IMAGE=ghcr.io/...
#   FAITHFUL=1        the BYE from Asterisk's own session timer (~1 min a run)
#   VARIANT=  TRANSPORT=ws|wss  MITIGATION=  DISCONNECT=rst|fin|close|rst+advertise
#   HANGUP=command|session-timer
DEBIAN_VERSIONS := 5.6.3 6.0.1 6.1.5
repro: setup
	@$(KAMLEAK) repro $(if $(VERSION),$(if $(filter $(DEBIAN_VERSIONS) $(addprefix debian-,$(DEBIAN_VERSIONS)),$(VERSION)),--kamailio-version $(patsubst debian-%,%,$(VERSION)),--kamailio-ref $(VERSION))) $(if $(IMAGE),--kamailio-image $(IMAGE)) \
	  $(if $(VARIANT),--variant $(VARIANT)) $(if $(TRANSPORT),--transport $(TRANSPORT)) \
	  $(if $(MITIGATION),--mitigation $(MITIGATION)) $(if $(DISCONNECT),--disconnect $(DISCONNECT)) \
	  $(if $(HANGUP),--hangup $(HANGUP)) $(if $(FAITHFUL),--faithful)

# Figures, not assertions: gate phases vs their floor, soak throughput.
bench: setup
	@$(KAMLEAK) bench --out artifacts

# kamleak reduce to the end, on Debian 6.0.1 (docs/reduce.md): upstream's WebRTC example with the
# 4140 trigger (75 of 1045 lines, 4-5 min), the cause named and checked by gating again.
reduce-stock: setup
	@KAMLEAK_REDUCE_STOCK=1 $(PY) -m pytest -q tests/integration/test_reduce.py -k stock $(PYTEST_ARGS)

# make soak [VERSION=6.0.1] [VARIANT=uac_req_send] [CALLS=1000] [MIX=0.001] [PBX=builtin|asterisk]
soak: setup
	@$(KAMLEAK) soak $(if $(VERSION),--kamailio-version $(VERSION)) $(if $(VARIANT),--variant $(VARIANT)) \
	  $(if $(CALLS),--calls $(CALLS)) $(if $(MIX),--mix $(MIX)) $(if $(PBX),--pbx $(PBX))

clean:
	rm -rf $(VENV) build *.egg-info
