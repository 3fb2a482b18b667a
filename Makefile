# nnship — the two commands a fresh machine needs: `make demo` and `make test` (`make test-fast`:
# the unit tier alone).
PYTHON ?= python3
VENV ?= .venv
# torch is installed before the project so that its build can be chosen: the default pin takes
# the platform's standard wheel (CUDA-enabled on Linux x86_64); pass TORCH=... for another build.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
RUN ?= runs/digits-cnn
MODEL ?= digits-cnn
PORT ?= 3000
OUT ?= reports/gpu

.PHONY: setup demo test test-fast lint settings-table format schemas quality export-bench serve-bench batch-bench soak fuzz k8s-rules gpu-image-check gpu-check dashboard-png sweep-png clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

demo: setup  ## train the default model (cnn on digits), export and optimize it, serve it on localhost
	$(BIN)/nnship train --model cnn --dataset digits --out $(RUN) --overwrite
	$(BIN)/nnship export $(RUN) --name $(MODEL)
	$(BIN)/nnship serve $(MODEL):latest --port $(PORT)

test: setup  ## the whole test suite
	$(BIN)/python -m pytest tests

test-fast: setup  ## the unit tier alone (no training, no servers): under a minute
	$(BIN)/python -m pytest tests/unit

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

settings-table: setup  ## regenerate the README's settings table from service/settings.py
	$(BIN)/python -m nnship.service.settings --readme README.md

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

schemas: setup  ## docs/schemas/*.schema.json from the typed contracts (nnship/contracts.py)
	$(BIN)/python -m nnship.contracts

quality: setup  ## retrain the quality-bar models over 3 seeds -> reports/training-quality.md
	$(BIN)/python -m nnship.training.quality

export-bench: setup  ## variants vs PyTorch eager -> reports/export-benchmark.md
	$(BIN)/python -m nnship.export.benchmark

serve-bench: setup  ## service vs bare, naive and echo apps under wrk, v2 JSON vs binary -> reports/serving-benchmark.md (needs wrk)
	$(BIN)/python -m nnship.loadtests.benchmark

batch-bench: setup  ## nnship predict vs in-process ONNX Runtime, rows/s and peak RSS -> reports/batch-benchmark.md
	$(BIN)/python -m nnship.batch.benchmark

soak: setup  ## ~50% of capacity for 10 minutes: worker RSS and event-loop lag -> reports/soak.md
	$(BIN)/python -m nnship.loadtests.soak --duration 600

fuzz: setup  ## schemathesis against /docs.json of a tiny served model -> reports/fuzz.md
	$(BIN)/python -m nnship.loadtests.fuzz --max-examples 100

k8s-rules: setup  ## deploy/k8s/base/prometheusrule.yaml from deploy/prometheus/*.rules.yml
	$(BIN)/python deploy/k8s/prometheusrule.py

gpu-image-check: setup  ## build the CPU and GPU serving images and compare them -> reports/gpu-image.md (root, Podman; downloads GBs once)
	$(BIN)/python deploy/container/gpu_image_check.py

gpu-check: setup  ## on an NVIDIA GPU: CUDA and TensorRT providers, fp16, IO binding, a batch job, ORT vs PyTorch, served load -> $(OUT)/gpu-check.md
	$(BIN)/python -m nnship.loadtests.gpucheck $(OUT)

dashboard-png: setup  ## the Grafana dashboard's queries over real traffic, drawn -> docs/images/grafana-dashboard.png (needs prometheus)
	$(BIN)/python -m nnship.loadtests.dashboard

sweep-png: setup  ## sweep the default model under nnship serve with wrk -> reports/loadtest-sweep/, docs/images/loadtest-sweep.png (needs wrk)
	$(BIN)/python -m nnship.loadtests.sweep

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
