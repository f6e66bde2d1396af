# Two commands do everything on a fresh machine with Python 3.11: `make serve` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 3000

export BENTOML_DO_NOT_TRACK := true
export BENTOML_CONFIG := $(CURDIR)/configuration.yaml

.PHONY: serve test lint train bento image clean bench check-config rollout crash-drill key

# The venv is rebuilt whenever a pin changes.
$(BIN)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

serve: $(BIN)/.installed
	HOST=$(HOST) PORT=$(PORT) PATH=$(CURDIR)/$(BIN):$$PATH scripts/serve.sh

train: $(BIN)/.installed
	$(BIN)/python train.py

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

# Check a configuration file as `bentoml serve` would, without serving (a ConfigMap before a
# rollout): `make check-config CONFIG=deploy/k8s/configuration.yaml`.
CONFIG ?= configuration.yaml
check-config: $(BIN)/.installed
	BENTOML_CONFIG=$(abspath $(CONFIG)) $(BIN)/python -m iris_bento.config_check

# A new API key for a named client: the key once, then its line for IRIS_API_KEYS_FILE
# (docs/clients.md): `make key NAME=batch-jobs`.
key: $(BIN)/.installed
	@$(BIN)/python -m iris_bento.keys new $(NAME)

bento: $(BIN)/.installed
	$(BIN)/bentoml build

# The OCI image, built the documented BentoML way from anywhere (scripts/build_image.sh):
# `make image`, `make image IMAGE_TAG=registry.example.com/iris:0.2.0 IMAGE_BACKEND=podman`;
# CONTAINERIZE_ARGS go to `bentoml containerize` as they are.
IMAGE_TAG ?= iris_classifier:latest
image: $(BIN)/.installed
	IMAGE_TAG=$(IMAGE_TAG) PATH=$(CURDIR)/$(BIN):$$PATH scripts/build_image.sh $(CONTAINERIZE_ARGS)

# The drills of docs/deployment.md, on replicas behind HAProxy under steady load: `make rollout`
# (model v1 to v2; `make rollout ROLLBACK=1`: and back to v1), `make crash-drill` (one replica
# SIGKILLed). ROLLOUT_ARGS go to `python -m rollout` (--runs 3, --runtime process, --report F).
rollout: $(BIN)/.installed
	$(BIN)/python -m rollout rollout $(if $(ROLLBACK),--rollback) $(ROLLOUT_ARGS)

crash-drill: $(BIN)/.installed
	$(BIN)/python -m rollout crash $(ROLLOUT_ARGS)

# The benchmark of issue 4 (bench/README.md): `make bench`, or `make bench BENCH_ARGS=--quick`.
BENCH_VENV := bench/.venvs/harness
$(BENCH_VENV)/.installed: bench/requirements/harness.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check -r $<
	touch $@

bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
