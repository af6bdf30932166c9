# make lab   - set everything up and open the course in JupyterLab
# make test  - set everything up and run every test (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: lab test setup lessons check-lessons lint format bench claims grade-demo clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (normalization course)" >/dev/null
	touch $(STAMP)

setup: $(STAMP)

# JupyterLab refuses to run as root unless told to (containers and cloud VMs often are root)
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: setup
	$(BIN)/jupyter lab $(ALLOW_ROOT) lessons/00_start_here.ipynb

lessons: setup
	$(BIN)/python -m course_utils.build

check-lessons: setup
	$(BIN)/python -m course_utils.build --check

lint: setup
	$(BIN)/ruff check course_utils tests
	$(BIN)/ruff format --check course_utils tests

format: setup
	$(BIN)/ruff format course_utils tests
	$(BIN)/ruff check --fix course_utils tests

test: setup
	bash .ci/browser-deps
	$(BIN)/ruff check course_utils tests
	$(BIN)/ruff format --check course_utils tests
	$(BIN)/python -m course_utils.build --check
	$(BIN)/python -m pytest -q tests --timeout 900
	$(BIN)/python -m pytest -q --nbval-lax --nbval-current-env --timeout 300 -p no:randomly solutions lessons
	$(BIN)/python -m course_utils.claims --shifts 2 --no-original --out test-artifacts/claims-ci.md

bench: setup
	$(BIN)/python -m course_utils.bench

# every claim check on the original and 4 shifted seed sets: writes docs/claims.md
claims: setup
	$(BIN)/python -m course_utils.claims

clean:
	rm -rf $(VENV) test-artifacts .pytest_cache .ruff_cache .hypothesis
