# The commands of the README: `make demo` (every stage at smoke size), `make reproduce` (the CPU main job), `make test`.
# Each creates .venv and installs requirements.txt first when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test reproduce toy data data-img study nut-study img-study analysis analysis-cpu-v1 venv clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

# Every stage end to end at smoke size, in a few minutes: the toy model, a tiny NutAssembly
# dataset (2 seed demos -> 2 MimicGen demos, 1 demo per target domain), the 3-run smoke plan
# through the study runner (cotrain, cfg_adda with a guidance pair, real_only; a few training
# steps, 2 episodes each; collected under runs/demo/results as a study's runs are under results/),
# the analysis of what it collected. A rerun keeps what is finished. The policies are untrained:
# this shows the pipeline, not results. OMP_WAIT_POLICY=PASSIVE: bench/bench_threads.py.
DEMO := runs/demo
demo: $(STAMP)
	MPLBACKEND=Agg OMP_WAIT_POLICY=PASSIVE $(PY) 00_toy.py --profile smoke --out $(DEMO)/toy
	$(PY) 01_generate_data.py --profile smoke --workers 2 --root $(DEMO)/data
	$(PY) study.py plans/smoke.toml --runs-dir $(DEMO) --results $(DEMO)/results --data-root $(DEMO)/data
	MPLBACKEND=Agg OMP_WAIT_POLICY=PASSIVE $(PY) 04_analyze.py --profile smoke --runs $(DEMO)/results --out $(DEMO)/analysis
	@echo "demo done: toy $(DEMO)/toy, data $(DEMO)/data, runs $(DEMO)/train, collected $(DEMO)/results, analysis $(DEMO)/analysis"

# Two pytest workers, each test file on one (--dist loadfile: a file's fixtures are built once),
# one torch thread per process: two processes of two threads each on 2 cores run far slower.
# --durations: the slowest tests in CI's log (the suite's time budget is 15 min on 2 cores).
# `ruff check .` first (ruff.toml: pyflakes, pycodestyle, import order, imports at the top).
test: $(STAMP)
	$(VENV)/bin/ruff check .
	OMP_NUM_THREADS=1 MPLBACKEND=Agg $(PY) -m pytest -q -n 2 --dist loadfile --durations=12 tests

# The main CPU job (README "make reproduce"): the toy model of Sec. 3 (both designs), the low-dim
# dataset set, the cpu-profile runs of plans/cpu.toml and the NutAssembly study of
# plans/nut_study.toml with their 200-episode evaluations, and the analysis rebuilt from what is
# committed. Runs and episodes already under results/ are skipped: the toy (~30 min), the data
# (~1 h) and the analysis (~20 min) always run, plus whatever of the study is not committed yet
# (`study.py plans/nut_study.toml --dry-run` prints its CPU-hours left; all of it is ~21 CPU-hours
# by the runner's cost model, ~27.5 at the rates measured during the study, ~14 h on 2 cores); from
# nothing (RESULTS=elsewhere) both plans are ~27 CPU-hours by the model, ~35 measured, ~19 h in all. Every step resumes after a kill and keeps what is finished; it writes
# results/toy*, results/analysis and, for runs it makes, results/train + results/eval (git diff
# shows any change). The earlier cpu_v1 study keeps its own folder (make analysis-cpu-v1).
RESULTS ?= results
reproduce: toy data study nut-study img-study analysis

toy: $(STAMP)
	MPLBACKEND=Agg $(PY) 00_toy.py --design paper --out results/toy_paper
	MPLBACKEND=Agg $(PY) 00_toy.py --out results/toy

# The low-dim dataset set (01_generate_data.py --profile cpu): per task 50 source seed demos ->
# 500 MimicGen source demos, 50 expert demos per target domain (~1 h on 2 cores: 54 min of wall time in
# RESULTS "Datasets"). Resumable: a rerun after a kill continues; finished files are kept.
# data-img: NutAssembly's image copies for the cpu_img profile (one agentview camera at 64 px, of
# the MimicGen source file and the three target files: ~45 min on 2 cores; the paper profile's
# layout, 2 cameras at 84 px: 01_generate_data.py --profile paper).
data: $(STAMP)
	$(PY) 01_generate_data.py --profile cpu --workers 2 --root data --set-image-tasks=

data-img: data
	$(PY) 01_generate_data.py --profile cpu_img --workers 2 --root data

# A plan of runs through the study runner (study.py): train, collect under $(RESULTS)/, evaluate;
# finished runs and episodes are skipped. `make study PLAN=plans/<x>.toml` runs another plan;
# `.venv/bin/python study.py $(PLAN) --dry-run` prints it with its CPU-hours.
PLAN ?= plans/cpu.toml
study: data
	$(PY) study.py $(PLAN) --results $(RESULTS)

# The NutAssembly study (plans/nut_study.toml, RESULTS "The NutAssembly study"): every robot-level
# claim once with the cpu profile; resumable, committed runs and episodes are skipped.
nut-study: data
	$(PY) study.py plans/nut_study.toml --results $(RESULTS)

# The visual-only study (plans/img_study.toml, RESULTS "The visual-only study"): image policies
# (--profile cpu_img) on the target_visual gap, the ratio sweep with three training seeds for C2;
# resumable, committed runs and episodes are skipped. Needs `make data-img`.
img-study: data-img
	$(PY) study.py plans/img_study.toml --results $(RESULTS)

# Stage 04 from the committed records alone (no runs/, no data/): every table and figure of the
# runs under $(RESULTS)/train and $(RESULTS)/eval (RESULTS.md "Representation alignment").
analysis: $(STAMP)
	MPLBACKEND=Agg $(PY) 04_analyze.py --runs $(RESULTS) --out $(RESULTS)/analysis --report RESULTS.md

analysis-cpu-v1: $(STAMP)
	MPLBACKEND=Agg $(PY) 04_analyze.py --runs results/cpu_v1 --out results/cpu_v1/analysis

clean-venv:
	rm -rf $(VENV)
