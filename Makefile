# Everything creates .venv itself. torch is installed first, pinned to the CPU build that lies on this kind of
# machine; the package's own range (<2.14) then installs nothing more.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH ?= torch==2.13.0
# Without its dependencies: PyPI's torchvision, which it asks for, breaks beside the CPU torch (pyproject.toml).
SPANDREL ?= spandrel==0.4.2

.PHONY: install browser run test lint migrate soak bench bench-scale clean worker train evaluate

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps "$(SPANDREL)"
	touch $(STAMP)

# Debian's Chromium and its driver, for the browser test of the web gallery (tests/bot/gallery/test_browser.py);
# installed when missing (the machines run as root).
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || (apt-get update && apt-get install -y chromium chromium-driver)

install: $(STAMP) browser

migrate: $(STAMP)
	$(PY) -m bot.db.migrate

run: $(STAMP)
	$(PY) -m bot

worker: $(STAMP)
	$(PY) -m generation.worker

# The linter first (seconds), then the whole suite; the tests never download a model.
test: $(STAMP) browser
	$(PY) -m ruff check bot generation tests bench migrations
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# The hardening suite in its long form (SOAK=1: more runs per fault); every test's figures go to SOAK_RECORDS and
# then into the table of docs/reliability.md. Pick a part with e.g. `make soak SOAK_ARGS="-k faults"` (a partial run
# replaces only its own rows of the table).
SOAK_RECORDS ?= $(or $(TMPDIR),/tmp)/imaginebot-soak/records.jsonl
SOAK_ARGS ?=

soak: $(STAMP)
	mkdir -p $(dir $(SOAK_RECORDS)) && rm -f $(SOAK_RECORDS)
	HF_HUB_OFFLINE=1 SOAK=1 RELIABILITY_OUT=$(SOAK_RECORDS) $(PY) -m pytest tests/hardening -q $(SOAK_ARGS); \
	status=$$?; $(PY) -m tests.hardening.report $(SOAK_RECORDS) \
	  $(if $(SOAK_ARGS),--keep-other-rows --command "make soak SOAK_ARGS='$(SOAK_ARGS)'") && exit $$status

lint: $(STAMP)
	$(PY) -m ruff check bot generation tests bench migrations

# The bot's cost per job as the backlog and the history grow (docs/benchmarks.md, "Bot scale"): the hot queries on
# 1,000,000 finished jobs, the real bot at backlogs of 100, 1,000 and 10,000, and a burst of 2,000 /imagine. Long
# (the history database is built once, then kept in $TMPDIR/imaginebot-bench); pick parts with
# BENCH_SCALE_ARGS="--parts queries".
BENCH_SCALE_ARGS ?=
bench-scale: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) bench/bot_scale.py $(BENCH_SCALE_ARGS)

# The shipped default model in its two stages (docs/model.md, "Training"). Every command resumes from what is
# already in its run folder, so an interrupted `make train` is continued by running it again.
STAGE1 ?= runs/default
STAGE2 ?= runs/v2
UNET_STEPS ?= 10000
COOLDOWN_STEPS ?= 1000
TRAIN := $(PY) -m generation.shapes.train
train: $(STAMP)
	$(TRAIN) --run $(STAGE1) --legacy-schedule --phase vae
	$(TRAIN) --run $(STAGE1) --legacy-schedule --phase latents
	$(TRAIN) --run $(STAGE1) --legacy-schedule --phase decoder
	$(TRAIN) --run $(STAGE1) --legacy-schedule --phase unet --unet-steps 1078
	$(TRAIN) --run $(STAGE1) --legacy-schedule --phase unet --unet-steps 2750 --offset-noise 0.15
	$(TRAIN) --run $(STAGE2) --phase vae --vae-init $(STAGE1)/decoder_final.pt --vae-steps 1200 --vae-batch 32 \
		--vae-lr 1e-3 --anchor-weight 0.1 --shape-weight 5
	$(TRAIN) --run $(STAGE2) --phase latents
	$(TRAIN) --run $(STAGE2) --phase unet --init-from $(STAGE1)/unet_002750.pt --unet-steps 1541
	$(TRAIN) --run $(STAGE2) --phase unet --unet-steps 1855 --high-t-frac 0.5
	$(TRAIN) --run $(STAGE2) --phase unet --unet-steps $(UNET_STEPS) --high-t-frac 0.5 --shape-loss-weight 4 \
		--cooldown-steps $(COOLDOWN_STEPS) --cooldown-lr 1e-4
	$(TRAIN) --run $(STAGE2) --phase export

evaluate: $(STAMP)
	$(PY) -m generation.shapes.evaluate

clean:
	rm -rf $(VENV) .pytest_cache
