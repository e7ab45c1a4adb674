# The two commands of the README: `make reproduce` (the CPU main job) and `make test`.
# Each creates .venv and installs requirements.txt first when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test reproduce toy venv clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

test: $(STAMP)
	MPLBACKEND=Agg $(PY) -m pytest -q tests

# The main CPU job; grows as stages land. Today: the toy model of Sec. 3 (~10 min on 2 cores),
# written to results/toy/ (the committed copy; git diff shows any change).
reproduce: toy

toy: $(STAMP)
	MPLBACKEND=Agg $(PY) 00_toy.py --out results/toy

clean-venv:
	rm -rf $(VENV)
