# Everything a fresh clone needs: `make run` and `make test` set up .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench chaos serve clean images

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

clean:
	rm -rf $(VENV) sample_images_out .pytest_cache .mypy_cache .ruff_cache
