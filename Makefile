# Everything a fresh clone needs: `make run` and `make test` set up .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench chaos serve clean images mutants

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
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check rpq tests bench scripts
	$(BIN)/mypy rpq

images: $(STAMP)
	$(BIN)/python scripts/make_sample_images.py sample_images

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

chaos: $(STAMP)
	$(BIN)/python bench/chaos.py

# Mutation testing of the modules whose decisions are pinned (TESTING.md); not part of `test`.
# report.py: only its SLA. Fresh each time, so the score is that of the tree as it is.
MUTATE := 'rpq.poll.*' 'rpq.extract.*' 'rpq.limiter.*' 'rpq.files.*' 'rpq.journal.*' \
	'rpq.submit.*' 'rpq.report.x__sla*' 'rpq.report.x_parse_sla*'

mutants: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,mutants]'
	rm -rf mutants
	@echo "mutmut: about 2000 mutants, 20-30 min on 2 cores"
	HYPOTHESIS_PROFILE=mutants $(BIN)/mutmut run $(MUTATE) > /dev/null
	$(BIN)/mutmut results --all true | $(BIN)/python scripts/mutation_score.py

clean:
	rm -rf $(VENV) sample_images_out .pytest_cache .mypy_cache .ruff_cache mutants
