# make setup: .venv with every dependency (idempotent)   make test: the test suite
# make demo: the main job on the embedded default        make bench: benchmarks → bench/results/
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TINY   := .cache/lisa-tiny
DEMO_OUT ?= demo_out

.PHONY: setup test demo bench clean

setup: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q test

$(TINY)/config.json: | setup
	$(VENV)/bin/lisa-make-tiny $(TINY)

demo: setup $(TINY)/config.json
	$(VENV)/bin/lisa-chat --model $(TINY) --image lisa_core/data/sample_room.png \
		--prompt "Where can I wash my hands? Please output segmentation mask." --out $(DEMO_OUT)

bench: setup
	$(PY) bench/bench_engine.py

clean:
	rm -rf $(VENV) .cache $(DEMO_OUT)
