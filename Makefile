# The two commands a newcomer needs: `make demo` and `make test`.
# TORCH picks the torch build: the default is the CPU-or-CUDA wheel pip finds for
# 2.13.0; for a CPU-only wheel elsewhere use
#   make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
TORCH ?= torch==2.13.0
DEMO_OUT ?= stemweave-demo

.PHONY: install install-test demo test mutation

install:
	./scripts/install-system-packages
	$(PYTHON) -m pip install -q $(TORCH)
	$(PYTHON) -m pip install -q -e .

install-test:
	./scripts/install-system-packages --test
	$(PYTHON) -m pip install -q $(TORCH)
	$(PYTHON) -m pip install -q -e ".[test]"

# Render a built-in example song, then separate it with the shipped default model.
demo: install
	stemweave data example -o $(DEMO_OUT)/example.wav --seconds 12
	stemweave separate $(DEMO_OUT)/example.wav -o $(DEMO_OUT)/stems

test: install-test
	$(PYTHON) -m pytest -q

# Mutation testing of the core modules (docs/mutation.md): minutes per module on one core, not part of `make test`.
# MODULES picks some (e.g. MODULES="sampler steps"); REV="--rev COMMIT" scores an earlier commit for a before/after.
MODULES ?=
REV ?=
mutation:
	nice -n 10 ./scripts/mutation $(REV) $(MODULES)
