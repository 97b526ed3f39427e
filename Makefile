# Everything a fresh machine needs: `make demo` runs the demo job, `make test` the checks.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS := $(VENV)/.extras

.PHONY: setup demo test test-quick lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first; the project's range then installs nothing more for torch.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,hf]'
	touch $(STAMP)

# The tracking extras the tests exercise (MLflow against a real server: ~1 min to install).
$(EXTRAS): $(STAMP)
	$(BIN)/pip install -q -e '.[dev,hf,mlflow,tensorboard]'
	touch $(EXTRAS)

setup: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
		echo "chromium not installed: browser tests will skip"; }
	@test -d /usr/share/datasets/fashion-mnist || { command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) || \
		echo "dataset-fashion-mnist not installed: Fashion-MNIST tests will skip"; }

demo: setup
	$(BIN)/spartan demo

# The folders installed as spartan_service.<folder> (pyproject.toml's package-dir).
SERVICE_PACKAGES := jobs worker service costmodels cli zoo

lint: setup
	$(BIN)/ruff check .
	# mypy knows no package-dir mapping: it reads the folders through spartan_service/ links
	rm -rf .typecheck && mkdir -p .typecheck/spartan_service
	for p in $(SERVICE_PACKAGES); do ln -s ../../$$p .typecheck/spartan_service/$$p; done
	MYPYPATH=.typecheck $(BIN)/mypy -p spartan -p spartan_service -p benchmarks
	$(BIN)/lint-imports

test: lint $(EXTRAS)
	$(BIN)/pytest -q -ra

# While working: lint, then the tests that need neither Redis/PostgreSQL nor ~10 s or more each.
test-quick: lint $(EXTRAS)
	$(BIN)/pytest -q -ra -m "not slow and not distributed"

clean:
	rm -rf $(VENV) spartan-data .pytest_cache .mypy_cache .ruff_cache .typecheck
