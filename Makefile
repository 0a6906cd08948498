# Quick start: `make run` serves the app on 127.0.0.1:8000 ($PORT); `make test` runs every test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
WORKERS ?= 2
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# Local settings (see .env.example), if any.
ifneq (,$(wildcard .env))
include .env
export
endif

.PHONY: install install-dev run serve worker test bench train cv train-gpu clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	@$(PY) -c 'import libarchive.ffi' 2>/dev/null || { echo "libarchive is missing (RAR, 7z and tar uploads need it): apt-get install libarchive13" >&2; exit 1; }
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

## install: create .venv, install the pinned requirements, migrate the database
install: $(VENV)/.installed
	$(PY) manage.py migrate --noinput

install-dev: $(VENV)/.installed-dev
	$(PY) manage.py migrate --noinput

## run: the development server with the bundled weights (DJANGO_DEBUG=1 unless set)
run: install
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(PY) manage.py runserver 127.0.0.1:$(PORT)

## serve: gunicorn with $(WORKERS) sync workers, each loading the ensemble once after fork; a request
##   running past GUNICORN_TIMEOUT seconds (300) ends with its worker, which is replaced
##   (collectstatic and gunicorn share these settings: the manifest one writes is the one served)
serve: export DJANGO_STATIC_MANIFEST := 1
serve: export DJANGO_DEBUG ?= 0
serve: install
	$(PY) manage.py collectstatic --noinput -v 0
	DJANGO_SECRET_KEY=$${DJANGO_SECRET_KEY:-$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(50))')} \
	WEB_CONCURRENCY=$(WORKERS) PORT=$(PORT) $(VENV)/bin/gunicorn -c python:_42epochs.gunicorn

## worker: process queued analyses and reap abandoned ones (with DJANGO_TASKS_BACKEND=django_tasks_db.DatabaseBackend)
worker: install
	$(PY) manage.py worker

## test: install everything, then the whole suite (unit, integration, browser); PYTEST_ARGS adds options
PYTEST_ARGS ?=
test: install-dev
	$(PY) -m pytest $(PYTEST_ARGS)

## bench: the engine and service benchmarks (results in bench-results/); run on an idle machine
bench: install-dev
	mkdir -p bench-results
	$(PY) -m segmenter.ml.bench --json bench-results/engine.json
	$(PY) -m segmenter.bench --runs 25 --json bench-results/service.json

## train: the shipped recipe on this machine's CPU (750 steps, 44 min on 2 cores with native bf16,
##   AVX512-BF16/AMX; a UNet step is ten times slower in emulated bf16, so train.native_bf16 leaves it
##   off there; resumable: run it again after an interruption), then export it to weights/ with the
##   summary of `make cv` ($(RUN)-cv/validation.json) in the manifest
RUN ?= ../ckpt/run
STEPS ?= 750
TRAIN_ARGS = --steps $(STEPS) --warmup-steps 50 --holdout --val-fraction-medseg 0 --val-fraction-kmader 0.2 \
	--val-fraction-expert 0 --eval-every 100000 --no-final-validation --out $(RUN)
train: install
	OMP_WAIT_POLICY=PASSIVE $(PY) -m segmenter.ml.training.train $(TRAIN_ARGS)
	$(PY) -m segmenter.ml.training.train $(TRAIN_ARGS) --export weights --validation-from $(RUN)-cv/validation.json \
	    --ensemble-weights 0.7 0.3

## cv: patient-grouped 3-fold cross-validation (Zenodo expert patients, MedSeg and kmader look-alike groups;
##   280 steps a fold, 17-21 min each on 2 cores; resumable), then every fold scored under each
##   averaging share and lower lesion edge: mean +- sd in $(RUN)-cv/validation.json
CV_STEPS ?= 280
CV_ARGS ?= --warmup-steps 25
cv: install
	for f in 0 1 2; do OMP_WAIT_POLICY=PASSIVE $(PY) -m segmenter.ml.training.train --folds 3 --fold $$f \
	    --steps $(CV_STEPS) $(CV_ARGS) --eval-every 100000 --no-final-validation --out $(RUN)-cv/fold-$$f \
	    || exit 1; done
	$(PY) -m segmenter.ml.training.foldscore $(RUN)-cv/fold-0 $(RUN)-cv/fold-1 $(RUN)-cv/fold-2 \
	    --json $(RUN)-cv/validation.json

## train-gpu: the same recipe on a CUDA GPU with 8x the steps on whole-slice crops, and its folds;
##   untested here (no GPU was lent): make train-gpu RUN=../ckpt/gpu
train-gpu: install
	$(MAKE) cv RUN=$(RUN)-gpu CV_STEPS=2240 CV_ARGS="--device cuda --threads 16 --warmup-steps 130 --crops 256 512"
	$(PY) -m segmenter.ml.training.train $(TRAIN_ARGS) --device cuda --threads 16 --steps 3360 \
	    --warmup-steps 200 --crops 256 512 --out $(RUN)-gpu
	$(PY) -m segmenter.ml.training.train $(TRAIN_ARGS) --device cuda --steps 3360 --warmup-steps 200 \
	    --crops 256 512 --out $(RUN)-gpu --export weights --validation-from $(RUN)-gpu-cv/validation.json \
	    --ensemble-weights 0.7 0.3

clean:
	rm -rf $(VENV) staticfiles
