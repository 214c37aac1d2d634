# Two commands for a newcomer:  `make run`  (the whole job on the embedded default)  and  `make test`.
# Everything is installed into .venv from the compiled, pinned requirement files.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Airflow for the DAG tests (`airflow dags test`), in a virtualenv of its own: its pins never meet ours.
AIRFLOW_VENV ?= .venv-airflow
# checkov for the policy scan of the manifests and Dockerfiles, likewise apart.
CHECKOV_VENV ?= .venv-checkov
DATA_PATH ?=
PYTEST_ARGS ?=
LINT_PATHS := src tests bench inference-api streamlit locust airflow scripts mlflow

.PHONY: run test test-tools images e2e lint typecheck bench requirements clean-state k8s-secrets loadtest loadtest-ui observability

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv

$(VENV)/.lib-installed: $(BIN)/python requirements/run.txt pyproject.toml inference-api/pyproject.toml streamlit/pyproject.toml
	$(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode -r requirements/run.txt
	$(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps -e . -e inference-api -e streamlit
	touch $@

$(VENV)/.dev-installed: $(VENV)/.lib-installed requirements/dev.txt
	$(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode -r requirements/dev.txt
	touch $@

## run: fetch the data (or use DATA_PATH=...), load RAW, build CLEAN, train and gate the champion, then
##      serve it: the inference API on http://127.0.0.1:8000 (docs at /docs) and the page on
##      http://127.0.0.1:8501, until Ctrl-C
run: $(VENV)/.lib-installed
	$(BIN)/readmission run $(if $(DATA_PATH),--data-path "$(DATA_PATH)")
	$(BIN)/python scripts/serve.py

$(AIRFLOW_VENV)/.installed: $(BIN)/python requirements/airflow.txt
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(BIN)/uv pip install --python $(AIRFLOW_VENV)/bin/python --quiet -r requirements/airflow.txt
	touch $@

$(CHECKOV_VENV)/.installed: $(BIN)/python requirements/checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(BIN)/uv pip install --python $(CHECKOV_VENV)/bin/python --quiet -r requirements/checkov.txt
	touch $@

## test: lint, type-check and run the test suite (the DAG tests use Airflow in .venv-airflow, the policy
##       scan checkov in .venv-checkov)
test: test-tools $(VENV)/.dev-installed $(AIRFLOW_VENV)/.installed $(CHECKOV_VENV)/.installed
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

## images: build the mlflow, inference-api, streamlit and locust images under the names and tags their
##         kustomizations deploy (Docker where an engine answers, else buildah); prints build time and size
images: $(VENV)/.lib-installed
	$(BIN)/python scripts/images.py

## e2e: build the images and run them as the manifests do (tests/test_images.py, test_kube_play.py): MLflow, the pipeline
##      training into it, the API, the page in Chromium, a Locust capacity run, podman kube play; needs
##      PostgreSQL and MariaDB (TEST_POSTGRES_URL, TEST_MYSQL_URL), the real file (TEST_DATA_PATH), kubectl,
##      root (rootful podman) and ports 5000, 8000, 8501, 9000, 9101 free; fails instead of skipping
e2e: test-tools $(VENV)/.dev-installed
	REQUIRE_TEST_SERVICES=1 $(BIN)/pytest tests/test_images.py tests/test_kube_play.py $(PYTEST_ARGS)

## test-tools: the system tools the tests drive (apt on Debian, else the exact command to run)
test-tools:
	scripts/test-tools.sh

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

## bench: loader vs pandas.to_sql vs bare COPY on PostgreSQL, then the whole pipeline stage by stage
bench: $(VENV)/.dev-installed
	$(BIN)/uv pip install --python $(BIN)/python --quiet -r requirements/bench.txt
	$(BIN)/python bench/raw_load.py $(if $(DATA_PATH),--data "$(DATA_PATH)")
	$(BIN)/python bench/pipeline.py $(if $(DATA_PATH),--data "$(DATA_PATH)")

## requirements: recompile the pinned requirement files from requirements/*.in
requirements: $(BIN)/python
	cd requirements && for f in lib api serve ui run locust dev bench airflow mlflow checkov; do ../$(BIN)/uv pip compile --quiet --python-version 3.11 $$f.in -o $$f.txt; done

## loadtest: the capacity finder against a running API (API_URL, default the one `make run` serves), payloads
##           from the embedded CLEAN store; reports and the verdict in test-output/locust/
API_URL ?= http://127.0.0.1:8000
loadtest: $(VENV)/.dev-installed
	mkdir -p test-output/locust
	CAPACITY_REPORT=test-output/locust/capacity.json $(BIN)/locust -f locust/locustfile.py,locust/capacity.py \
		--headless --stop-timeout 60 --host $(API_URL) --csv test-output/locust/capacity \
		--html test-output/locust/capacity.html

## loadtest-ui: Locust's web UI on http://127.0.0.1:8089 against a running API (no shape: users set by hand)
loadtest-ui: $(VENV)/.dev-installed
	$(BIN)/locust -f locust/locustfile.py --host $(API_URL)

## observability: regenerate observability/prometheusrule.yaml from prometheus/rules/ (one source of rules)
observability: $(VENV)/.lib-installed
	$(BIN)/python scripts/observability.py

## k8s-secrets: create the git-ignored */secrets.env of the Kubernetes manifests (random values, kept on re-runs;
##              ROTATE="NAME ..." gives those names new values everywhere: README, "Security")
ROTATE ?=
k8s-secrets:
	$(PYTHON) scripts/k8s_secrets.py $(if $(ROTATE),--rotate $(ROTATE))

## clean-state: delete the embedded databases and download cache under var/
clean-state:
	rm -rf var
