VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test test-all demo clean
setup:
	@VENV=$(VENV) bash install/setup.sh

# Default test run (~minutes on 2 cores). MAE_RUN_SLOW=1 adds the slow end-to-end tests.
test: setup
	$(PY) -m pytest -q

test-all: setup
	MAE_RUN_SLOW=1 $(PY) -m pytest -q

demo: setup
	$(PY) tools/compare.py

clean:
	rm -rf $(VENV) output
