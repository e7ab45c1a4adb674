# The commands of the README: `make demo` (every stage at smoke size), `make reproduce` (the CPU main job), `make test`.
# Each creates .venv and installs requirements.txt first when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test reproduce toy data nut nut-methods mugs nut-img analysis venv clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

# Every stage end to end at smoke size, in a few minutes: the toy model, a tiny NutAssembly
# dataset (2 seed demos -> 2 MimicGen demos, 1 demo per target domain), a few training steps of
# cotrain and cfg_adda, 2 evaluation episodes each, the analysis. Everything goes to runs/demo/;
# a rerun keeps what is finished. The policies are untrained: this shows the pipeline, not results.
DEMO := runs/demo
demo: $(STAMP)
	MPLBACKEND=Agg $(PY) 00_toy.py --profile smoke --out $(DEMO)/toy
	$(PY) 01_generate_data.py --profile smoke --workers 2 --root $(DEMO)/data
	for m in cotrain cfg_adda; do \
	  $(PY) 02_train.py --profile smoke --method $$m --ratio 0.3 --data-root $(DEMO)/data \
	    --target-name demos_1 --source-name mimicgen_2 --out $(DEMO)/train/$$m --resume || exit 1; \
	done
	$(PY) 03_eval.py --profile smoke --ckpt $(DEMO)/train/cotrain/ckpt.pt,$(DEMO)/train/cfg_adda/ckpt.pt \
	  --trials 2 --workers 2 --out $(DEMO)/eval/demo
	MPLBACKEND=Agg $(PY) 04_analyze.py --profile smoke --runs $(DEMO) --out $(DEMO)/analysis
	@echo "demo done: toy $(DEMO)/toy, data $(DEMO)/data, runs $(DEMO)/train, rollouts $(DEMO)/eval, analysis $(DEMO)/analysis"

# Two pytest workers, each test file on one (--dist loadfile: a file's fixtures are built once),
# one torch thread per process: two processes of two threads each on 2 cores run far slower.
test: $(STAMP)
	OMP_NUM_THREADS=1 MPLBACKEND=Agg $(PY) -m pytest -q -n 2 --dist loadfile tests

# The main CPU job: the toy model of Sec. 3 (~30 min: both designs), the dataset set (~2 h), the NutAssembly
# runs and rollouts (~6 h) and the analysis (~15 min) on 2 cores; every step resumes after a kill
# and keeps what is finished. Writes results/toy/, results/toy_paper/ and results/analysis/ (the committed copies:
# git diff shows any change).
reproduce: toy analysis

toy: $(STAMP)
	MPLBACKEND=Agg $(PY) 00_toy.py --design paper --out results/toy_paper
	MPLBACKEND=Agg $(PY) 00_toy.py --out results/toy

# The CPU dataset set (01_generate_data.py --profile cpu): per task 50 source seed demos ->
# 500 MimicGen source demos, 50 expert demos per target domain; NutAssembly also with images.
# Resumable: rerun after a kill continues; finished files are kept. Several hours on 2 cores.
data: $(STAMP)
	$(PY) 01_generate_data.py --profile cpu --workers 2 --root data

# The cpu-profile NutAssembly comparison of RESULTS.md ("Training", "Evaluation"): real_only vs
# cotrain at the guideline's ratio, then the ratio sweep's w = 0.05 and 0.5, vis-phys target,
# 200 episodes each, after `make data` (finished files are kept). About 3 h of training (4 runs of
# ~42 min) + 1 h of rollouts on 2 cores; resumable.
NUT := runs/train/NutAssembly_target_visual_physics
nut: data
	$(PY) 02_train.py --profile cpu --method real_only --resume
	$(PY) 02_train.py --profile cpu --method cotrain --ratio auto --resume
	$(PY) 03_eval.py --ckpt $(NUT)_real_only_r1_encdec_s0/ckpt.pt --trials 200 --workers 2
	$(PY) 03_eval.py --ckpt $(NUT)_cotrain_r0.17_encdec_s0/ckpt.pt --trials 200 --workers 2
	for w in 0.05 0.5; do \
	  $(PY) 02_train.py --profile cpu --method cotrain --ratio $$w --resume && \
	  $(PY) 03_eval.py --ckpt $(NUT)_cotrain_r$${w}_encdec_s0/ckpt.pt --trials 200 --workers 2 || exit 1; \
	done

# The cpu-profile NutAssembly method comparison of RESULTS.md ("Representation alignment and the
# paper's tables"): CFG-ADDA at the guideline's ratio with a guidance sweep (Fig. 10),
# +discrimination (Table 1), sim pre-training then real fine-tuning (Table 3, App. D.4: the paper
# does not give its step counts; ours: 20000 + 5000). After `make nut`; about 3 h on 2 cores.
nut-methods: nut
	$(PY) 02_train.py --profile cpu --method cfg_adda --ratio auto --resume
	$(PY) 03_eval.py --ckpt $(NUT)_cfg_adda_r0.17_encdec_s0/ckpt.pt --trials 100 --workers 2 --guidance=-1,-0.5,0,0.5
	$(PY) 02_train.py --profile cpu --method discriminate --ratio auto --resume
	$(PY) 03_eval.py --ckpt $(NUT)_discriminate_r0.17_encdec_s0/ckpt.pt --trials 200 --workers 2
	$(PY) 02_train.py --profile cpu --method sim_only --resume
	$(PY) 02_train.py --profile cpu --method real_only --init-from $(NUT)_sim_only_r0_encdec_s0/ckpt.pt \
	    --steps 5000 --warmup 200 --out $(NUT)_pretrain_ft_r1_encdec_s0 --resume
	$(PY) 03_eval.py --ckpt $(NUT)_pretrain_ft_r1_encdec_s0/ckpt.pt --trials 200 --workers 2

# The cpu recipe on the two other tasks (RESULTS "A CPU recipe"): sim_only evaluated in the source
# domain and real_only in target_visual_physics, 200 episodes each, after `make data`. About 3 h
# of training (4 runs of ~42 min) + 1 h of rollouts on 2 cores; resumable.
mugs: data
	for t in MugHang MugCleanup; do \
	  $(PY) 02_train.py --task $$t --method sim_only --resume && \
	  $(PY) 02_train.py --task $$t --method real_only --resume && \
	  $(PY) 03_eval.py --ckpt runs/train/$${t}_target_visual_physics_sim_only_r0_encdec_s0/ckpt.pt --domain source \
	    --trials 200 --workers 2 --out runs/eval/$${t}_target_visual_physics_sim_only_r0_encdec_s0_in_source && \
	  $(PY) 03_eval.py --ckpt runs/train/$${t}_target_visual_physics_real_only_r1_encdec_s0/ckpt.pt \
	    --trials 200 --workers 2 || exit 1; \
	done

# Image policies on this CPU (RESULTS.md "Image policies", --profile cpu_img): the NutAssembly
# low-dim files if missing, their image copies (one agentview camera at 64 px, ~35 min), sim_only
# evaluated in the source domain, then real_only, cotrain and cfg_adda at the guideline's ratio in
# target_visual and target_visual_physics, 100 episodes each. ~25 min per run and ~10 min per
# evaluation on 2 cores (~5 h in all); resumable (finished files, runs and episodes are kept).
IMG := runs/train/NutAssembly
nut-img: $(STAMP)
	$(PY) 01_generate_data.py --profile cpu_img --workers 2 --root data
	$(PY) 02_train.py --profile cpu_img --method sim_only --resume
	$(PY) 03_eval.py --ckpt $(IMG)_target_visual_physics_img64_sim_only_r0_encdec_s0/ckpt.pt --domain source \
	  --trials 100 --workers 2 --out runs/eval/NutAssembly_target_visual_physics_img64_sim_only_r0_encdec_s0_in_source
	for d in target_visual target_visual_physics; do \
	  $(PY) 02_train.py --profile cpu_img --target-domain $$d --method real_only --resume && \
	  $(PY) 03_eval.py --ckpt $(IMG)_$${d}_img64_real_only_r1_encdec_s0/ckpt.pt --trials 100 --workers 2 && \
	  for m in cotrain cfg_adda; do \
	    $(PY) 02_train.py --profile cpu_img --target-domain $$d --method $$m --ratio auto --resume && \
	    $(PY) 03_eval.py --ckpt $(IMG)_$${d}_img64_$${m}_r0.17_encdec_s0/ckpt.pt --trials 100 --workers 2 || exit 1; \
	  done || exit 1; \
	done

# Stage 04 over every run under runs/: tables, figures, missing.md (RESULTS.md "Representation
# alignment and the paper's tables").
analysis: nut-methods
	MPLBACKEND=Agg $(PY) 04_analyze.py --runs runs --out results/analysis

clean-venv:
	rm -rf $(VENV)
