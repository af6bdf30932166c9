# make lab   - set up what a learner needs and open lesson 00 in JupyterLab
# make test  - set up the development tools too and run every test (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# the page `make lab` opens (and prints, with its token, for a remote or headless machine)
LESSON_URL := /lab/tree/lessons/00_start_here.ipynb
LAB_ARGS ?=
# where torch comes from: empty = PyPI (on Linux the CUDA build, ~4.6 GB installed); for the CPU
# build on Linux (~0.75 GB): make lab TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: lab test unit setup setup-dev lessons check-lessons lint format bench claims grade-demo static clean

# the learner's environment: requirements.txt, the course package, the kernel, and JupyterLab
# settings (jupyter-config/: no news toast, no update checks)
$(STAMP): requirements.txt pyproject.toml jupyter-config
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install --quiet torch==2.13.0 --index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (normalization course)" >/dev/null
	cp -R jupyter-config/. $(VENV)/
	touch $(STAMP)

# the development tools on top: tests, nbgrader, the static edition (requirements-dev.txt);
# nbgrader's JupyterLab extensions stay off, so `make lab` shows what a learner sees (its
# command line, which the course's nbgrader export uses, needs none of them)
NBGRADER_SERVER := $(addprefix nbgrader.server_extensions.,formgrader validate_assignment assignment_list course_list)
$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/jupyter labextension disable --level=sys_prefix @jupyter/nbgrader >/dev/null 2>&1
	$(BIN)/jupyter server extension disable --sys-prefix $(NBGRADER_SERVER) >/dev/null 2>&1
	touch $(DEV_STAMP)

setup: $(STAMP)

setup-dev: $(DEV_STAMP)

# JupyterLab refuses to run as root unless told to (containers and cloud VMs often are root)
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: setup
	$(BIN)/jupyter lab $(ALLOW_ROOT) --LabApp.default_url=$(LESSON_URL) $(LAB_ARGS)

lessons: setup
	$(BIN)/python -m course_utils.build

check-lessons: setup
	$(BIN)/python -m course_utils.build --check

lint: setup-dev
	$(BIN)/ruff check course_utils tests
	$(BIN)/ruff format --check course_utils tests

format: setup-dev
	$(BIN)/ruff format course_utils tests
	$(BIN)/ruff check --fix course_utils tests

test: setup-dev
	bash .ci/browser-deps
	bash .ci/sandbox-deps
	$(BIN)/ruff check course_utils tests
	$(BIN)/ruff format --check course_utils tests
	$(BIN)/python -m course_utils.build --check
	$(BIN)/python -m pytest -q -rs tests --timeout 900
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --nbval-lax --nbval-current-env --timeout 300 -p no:randomly solutions lessons
	$(BIN)/python -m course_utils.claims --shifts 2 --no-original --out test-artifacts/claims-ci.md

# the unit tests alone (CI runs them on Python 3.10 too: make unit PYTHON=python3.10 VENV=.venv-py310)
unit: setup-dev
	$(BIN)/python -m pytest -q -rs tests --timeout 900 -m "not browser and not slow"

static: setup-dev
	$(BIN)/python -m course_utils.static

bench: setup
	$(BIN)/python -m course_utils.bench

# every claim check on the original and 4 shifted seed sets: writes docs/claims.md
claims: setup
	$(BIN)/python -m course_utils.claims

clean:
	rm -rf $(VENV) test-artifacts .pytest_cache .ruff_cache .hypothesis
