# av_td3_ros workspace. `make demo` (the main job) and `make test` (the whole suite) both run
# `make setup` first, which is idempotent and quick once done.
SHELL := /bin/bash
ENV := source scripts/env.sh
DEMO_MINUTES ?= 10
PYTEST_ARGS ?=

.PHONY: setup demo test stress bench bench-learning lint clean

setup:
	@bash scripts/setup.sh

demo: setup
	@$(ENV) && DEMO_MINUTES=$(DEMO_MINUTES) python -m av_td3_ros.apps.demo

test: setup
	@$(ENV) && bash scripts/run_tests.sh $(PYTEST_ARGS)

# fault-injection loops at full length (pytest -m stress; AV_TD3_STRESS_KILLS=50 by default)
stress: setup
	@$(ENV) && bash scripts/run_stress.sh $(PYTEST_ARGS)

bench: setup
	@$(ENV) && python bench/run_bench.py

# ours vs Stable-Baselines3 TD3 learning on the gym env (bench/learning.json + .png);
# BENCH_LEARNING_STEPS (env steps per run), BENCH_LEARNING_SEEDS, BENCH_LEARNING_JOBS
bench-learning: setup
	@$(ENV) && nice -n 10 python bench/bench_learning.py

lint: setup
	@$(ENV) && ruff check av_td3_ros bench

clean:
	rm -rf build install log
