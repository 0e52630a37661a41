# `make demo` and `make test` each create .venv and install the pinned stack on first use.
# Set-up is idempotent: a stamp keyed on requirements.txt + pyproject.toml skips it afterwards.
PYTHON ?= python3.11
VENV := .venv
BENCH := $(VENV)/bin/bench
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-12)
DEMO := workspace/demo

.PHONY: setup test test-fast demo bench-speed clean-demo

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $@

test: setup
	$(VENV)/bin/pytest -q

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow"

# The main job on the embedded default: synthetic corpus -> corpus manifest -> SimCLR (quick).
demo: setup
	$(BENCH) corpus synth --out $(DEMO)/corpus --n 256 --seed 0 --size 96
	$(BENCH) corpus build --root $(DEMO)/corpus --workspace $(DEMO)
	$(BENCH) pretrain --method simclr --profile quick --corpus $(DEMO)/corpus --workspace $(DEMO) --epochs 2
	$(BENCH) runs --workspace $(DEMO)

bench-speed: setup
	$(VENV)/bin/python benchmarks/pretrain_step.py

clean-demo:
	rm -rf $(DEMO)
