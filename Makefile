# Everything a fresh clone needs: `make run` and `make test` set up .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The suite also runs on the oldest and newest Pythons rpq supports, each in its own venv
# (.venv-3.10, .venv-3.13) made from scratch with pyenv's interpreter (or pythonX.Y on PATH).
EXTRA_PYTHONS ?= 3.10 3.13
PYENV_ROOT ?= $(HOME)/.pyenv
python_for = $(or $(lastword $(sort $(wildcard $(PYENV_ROOT)/versions/$(1).*/bin/python$(1)))),$(shell command -v python$(1)),$(error no Python $(1): install it with `pyenv install $(1)`))
# On the extra Pythons: everything but the scale tests (marked slow) and the runs that repeat
# the 3.11 ones at length (chaos, crashes, benchmark smoke); see README, Development.
# The tests mostly wait on HTTP servers, worker processes and sockets, so they run in parallel
# (pytest-xdist) with more processes than cores; TEST_JOBS=0 runs them one by one.
TEST_JOBS ?= 4
PYTEST := -m pytest -n $(TEST_JOBS) --dist worksteal
EXTRA_PYTEST ?= -m "not slow" --ignore=tests/test_chaos.py --ignore=tests/test_crashes.py \
	--ignore=tests/test_bench_smoke.py --ignore=tests/test_serve_bench.py -q

.PHONY: run test test-extra lint bench chaos serve clean images mutants docs-images streak
.PRECIOUS: .venv-%/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/rpq batch sample_images

serve: $(STAMP)
	$(BIN)/rpq serve

test: $(STAMP) lint
	$(BIN)/python $(PYTEST)
	$(MAKE) test-extra

test-extra: $(addprefix test-,$(EXTRA_PYTHONS))

test-%: .venv-%/.installed
	.venv-$*/bin/python $(PYTEST) $(EXTRA_PYTEST)

.venv-%/.installed: pyproject.toml
	rm -rf .venv-$*
	$(call python_for,$*) -m venv .venv-$*
	.venv-$*/bin/python -m pip install --quiet --upgrade pip
	.venv-$*/bin/python -m pip install --quiet -e '.[test]'
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check rpq tests bench scripts
	$(BIN)/mypy rpq

images: $(STAMP)
	$(BIN)/python scripts/make_sample_images.py sample_images

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

chaos: $(STAMP)
	$(BIN)/python bench/chaos.py

# The 3.11 suite RUNS times in a row (default 20), stopping at the first failure, whose log
# it prints: how a flaky test is found. Not part of `test`.
RUNS ?= 20
streak: $(STAMP)
	@for i in $$(seq 1 $(RUNS)); do \
		if $(BIN)/python $(PYTEST) -q -p no:cacheprovider > "$${TMPDIR:-/tmp}/rpq-streak.log" 2>&1; \
		then echo "run $$i of $(RUNS): $$(tail -1 "$${TMPDIR:-/tmp}/rpq-streak.log")"; \
		else tail -60 "$${TMPDIR:-/tmp}/rpq-streak.log"; echo "run $$i of $(RUNS) failed"; exit 1; fi; \
	done

# Mutation testing of the modules whose decisions are pinned (TESTING.md); not part of `test`.
# report.py: only its SLA. Fresh each time, so the score is that of the tree as it is.
MUTATE := 'rpq.poll.*' 'rpq.extract.*' 'rpq.limiter.*' 'rpq.files.*' 'rpq.journal.*' \
	'rpq.journal_index.*' 'rpq.submit.*' 'rpq.report.x__sla*' 'rpq.report.x_parse_sla*'

MUTANTS_CHILDREN ?= 2

mutants: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,mutants]'
	rm -rf mutants
	@echo "mutmut: about 2500 mutants, over an hour on 2 busy cores"
	HYPOTHESIS_PROFILE=mutants $(BIN)/mutmut run --max-children $(MUTANTS_CHILDREN) $(MUTATE) > /dev/null
	$(BIN)/mutmut results --all true | $(BIN)/python scripts/mutation_score.py $(MUTATE)

# The README's pictures (docs/live-table.svg, docs/timeline.png) from a real run against
# rpq serve.
docs-images: $(STAMP)
	$(BIN)/python scripts/docs_images.py

clean:
	rm -rf $(VENV) .venv-* sample_images_out .pytest_cache .mypy_cache .ruff_cache mutants
