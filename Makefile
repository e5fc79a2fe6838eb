# Two commands for a fresh machine (see README):
#   make demo   set up .venv and run the default case end to end, then render its fields
#   make test   set up .venv (with test tools) and run the whole suite serially, then on 2 MPI ranks
VENV    := .venv
PY      := $(VENV)/bin/python
MPIEXEC := $(VENV)/bin/mpiexec
CASE    ?= cases/onen2022/reference.toml
PYTEST_ARGS ?=

.PHONY: setup setup-test demo test test-serial test-mpi clean

setup:
	@bash scripts/bootstrap.sh

setup-test:
	@bash scripts/bootstrap.sh --test

demo: setup
	$(VENV)/bin/protonfem validate $(CASE)
	$(VENV)/bin/protonfem run $(CASE) --output results/demo
	$(VENV)/bin/protonfem view results/demo

test: setup-test
	$(MAKE) --no-print-directory test-serial test-mpi

test-serial:
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

# -m mpi4py: an exception on one rank aborts all ranks instead of deadlocking the others.
test-mpi:
	$(MPIEXEC) -n 2 $(PY) -m mpi4py -m pytest -q $(PYTEST_ARGS) tests

clean:
	rm -rf results .venv
