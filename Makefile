# vqserve: two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup serve test lint unit bench train train-data train-digits train-prior clean

setup: $(STAMP)

# Reinstall only when the dependency declarations change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/python -m service

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint unit

# Every figure of bench/README.md: the model against diffusers, then the service against its peers.
bench: $(STAMP)
	$(BIN)/python -m bench.model_vs_diffusers
	$(BIN)/python -m bench.service_vs_peers --curves
	$(BIN)/python -m bench.linear_baseline --checkpoint model/weights/default

# OpenCV's sample photos (Debian's opencv-doc package): more real colour photos for the default model
OPENCV_PHOTOS := runs/data/opencv-doc
$(OPENCV_PHOTOS):
	rm -rf runs/data/deb && mkdir -p runs/data/deb
	cd runs/data/deb && (apt-get download opencv-doc || (apt-get update -qq && apt-get download opencv-doc))
	dpkg-deb -x runs/data/deb/opencv-doc_*.deb runs/data/deb/root
	mv runs/data/deb/root/usr/share/doc/opencv-doc/examples/data $(OPENCV_PHOTOS)
	rm -rf runs/data/deb

train-data: $(OPENCV_PHOTOS)

# Two legs, as the shipped default was trained: 18000 steps from scratch, then 22000 more from that checkpoint with a
# fresh warm-up and cosine decay from half the peak learning rate (model/weights/README.md).
DEFAULT_LEG1 := runs/default/leg1
train: $(STAMP) $(OPENCV_PHOTOS)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m model.train --preset default --out $(DEFAULT_LEG1) --state runs/default/leg1.pt
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m model.train --preset default --init $(DEFAULT_LEG1) --lr 5e-4 \
		--steps 22000 --seed 1 --restarts-until 0.5 --out model/weights/default --state runs/default/leg2.pt
	cp $(DEFAULT_LEG1)/training.json model/weights/default/training-leg1.json
	$(BIN)/python -m model.training.card grid model/weights/default

train-digits: $(STAMP)
	$(BIN)/python -m model.train --preset digits --out model/weights/digits --threads 1
	$(BIN)/python -m model.training.card grid model/weights/digits

# The digits model's class-conditional PixelCNN prior (model/weights/digits/prior), then its model card's figures.
train-prior: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m model.train_prior --vq model/weights/digits --threads 1 --seed 0
	$(BIN)/python -m model.training.prior_card all model/weights/digits

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
