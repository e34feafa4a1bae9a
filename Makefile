# Two commands do everything on a fresh machine (Python 3.10+, no GPU, no conda needed):
#   make demo   -- set up .venv, generate the synthetic dataset and draw a sample of it
#   make test   -- set up .venv and run the test suite
#   make reproduce -- every table and figure of the paper on the synthetic data (demo profile, about 20 min on 2 cores)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data/synthetic
FIGURES ?= figures

.PHONY: setup demo test reproduce clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

demo: setup
	$(BIN)/oshp synth --out $(DATA)
	$(BIN)/oshp check-data --dataset atr --data-root $(DATA)
	$(BIN)/oshp pairs --dataset atr --data-root $(DATA) --out $(DATA)/meta_test_pairs.json
	$(BIN)/oshp show --data-root $(DATA) --split train --count 12 --out $(FIGURES)/synthetic_samples.png

test: setup
	$(BIN)/python -m pytest -q --nbval --nbval-sanitize-with notebooks/nbval_sanitize.cfg tests notebooks

reproduce: setup
	$(BIN)/oshp reproduce --profile demo --data-root $(DATA) --figures $(FIGURES) --publish-notebooks

clean:
	rm -rf $(VENV) data/synthetic
