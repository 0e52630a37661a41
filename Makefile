# `make demo` and `make test` each create .venv and install the pinned stack on first use.
# Set-up is idempotent: a stamp keyed on requirements.txt + pyproject.toml skips it afterwards.
PYTHON ?= python3.11
VENV := .venv
BENCH := $(VENV)/bin/bench
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-12)
DEMO := workspace/demo
SEG_DATA := isic2018 jsrt kvasir_seg drive busi brats mmwhs_ct mmwhs_mri prostate
DET_DATA := vindr_cxr kvasir_det

.PHONY: setup system-deps test test-fast test-margin demo bench-speed clean-demo

setup: $(STAMP)

# Servers and browsers the tests drive for real, from Debian's packages: PostgreSQL (the shared
# results store, Optuna sweeps with several workers) and Chromium + ChromeDriver (the leaderboard's
# browser test). Installed when missing and possible (root with apt-get); otherwise those tests skip
# and say why.
SYSTEM_PACKAGES := postgresql chromium chromium-driver
system-deps:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && test -x /usr/bin/chromium \
	    && test -x /usr/bin/chromedriver; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian packages: $(SYSTEM_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    $(SYSTEM_PACKAGES) >/dev/null || { echo "error: apt-get install $(SYSTEM_PACKAGES) failed"; exit 1; }; \
	else echo "warning: $(SYSTEM_PACKAGES) missing and not installable here (needs root + apt-get):" \
	  "the PostgreSQL and browser tests will skip"; fi

$(STAMP): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $@

# One pytest worker per CPU this process may use (nproc honours the affinity set); each worker is
# pinned to its own CPU share (tests/conftest.py). TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= $(shell nproc)
test: setup system-deps
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=15 -m "not margin"

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow and not margin"

# SSL-beats-random with a margin (issue #4's check): pretrains for ~10 minutes, so opt-in on CPU.
test-margin: setup
	$(VENV)/bin/pytest -q -m margin --durations=5

# The whole path on the embedded default data (every number it prints is labelled synthetic):
# synthetic downstream data in the public layouts -> prepare -> phantom corpus -> SimCLR (quick)
# -> eval of every checkpoint and random init on the paper's 15 tasks (quick profile): the
# classification tasks over 2 seeds, the 11 segmentation and 2 detection tasks over 1 (each a fine-tuning)
# -> the static leaderboard (WORKSPACE/leaderboard/index.html).
demo: setup
	$(BENCH) data synth brain_tumor --out $(DEMO)/raw/brain_tumor --n 160 --seed 0 --size 64
	$(BENCH) data synth fgadr --out $(DEMO)/raw/fgadr --n 160 --seed 0 --size 64
	$(BENCH) data prepare brain_tumor --src $(DEMO)/raw/brain_tumor --workspace $(DEMO)
	$(BENCH) data prepare fgadr --src $(DEMO)/raw/fgadr --workspace $(DEMO)
	for d in $(SEG_DATA); do \
	  $(BENCH) data synth $$d --out $(DEMO)/raw/$$d --seed 0 && \
	  $(BENCH) data prepare $$d --src $(DEMO)/raw/$$d --workspace $(DEMO) || exit 1; done
	for d in $(DET_DATA); do \
	  $(BENCH) data synth $$d --out $(DEMO)/raw/$$d --n 24 --seed 0 && \
	  $(BENCH) data prepare $$d --src $(DEMO)/raw/$$d --workspace $(DEMO) || exit 1; done
	$(BENCH) corpus synth --out $(DEMO)/corpus --n 256 --seed 0 --size 96
	$(BENCH) corpus build --root $(DEMO)/corpus --workspace $(DEMO)
	$(BENCH) pretrain --method simclr --profile quick --corpus $(DEMO)/corpus --workspace $(DEMO) --epochs 2
	$(BENCH) runs --workspace $(DEMO)
	$(BENCH) eval --task brain_tumor --task fgadr --profile quick --seeds 2 --workspace $(DEMO)
	$(BENCH) eval --all-tasks --profile quick --seeds 1 --workspace $(DEMO)
	$(BENCH) leaderboard --workspace $(DEMO) --fail-on-degenerate

bench-speed: setup
	$(VENV)/bin/python benchmarks/pretrain_step.py

clean-demo:
	rm -rf $(DEMO)
