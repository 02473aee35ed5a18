#!/usr/bin/env bash
# The stress tests (pytest -m stress) in long form, with run_tests.sh's DDS isolation.
# AV_TD3_STRESS_KILLS: trainer processes SIGKILLed during checkpoint writes (default 50 here,
# 4 in the normal suite).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/test_env.sh
source scripts/test_env.sh
export AV_TD3_STRESS_KILLS=${AV_TD3_STRESS_KILLS:-50}
# AV_TD3_STRESS_STARTS: starts of the three-process training graph in a random order with random
# delays, each checked for transitions within 20 s (default 100 here, 3 in the normal suite).
export AV_TD3_STRESS_STARTS=${AV_TD3_STRESS_STARTS:-100}
# AV_TD3_STRESS_CRASHES: trainer SIGKILL + resume:=latest rounds per trainer mode under running
# actors (test_crash_resume.py; 1 in the normal suite).
export AV_TD3_STRESS_CRASHES=${AV_TD3_STRESS_CRASHES:-5}
# AV_TD3_STRESS_SIM_RESTARTS: simulator kills + restarts under a running policy node, per case
# (test_sim_restart.py; 1 in the normal suite).
export AV_TD3_STRESS_SIM_RESTARTS=${AV_TD3_STRESS_SIM_RESTARTS:-5}
# AV_TD3_SOAK_S: seconds of the training-graph soak with RSS sampled every 10 s (test_soak.py;
# 60 in the normal suite, 20 minutes here).
export AV_TD3_SOAK_S=${AV_TD3_SOAK_S:-1200}
# AV_TD3_FLOOD_S: seconds of the 200 Hz camera flood and of the slow-trainer run
# (test_flood.py; 30 in the normal suite).
export AV_TD3_FLOOD_S=${AV_TD3_FLOOD_S:-300}
echo "[stress] ROS_DOMAIN_ID=$ROS_DOMAIN_ID AV_TD3_STRESS_KILLS=$AV_TD3_STRESS_KILLS AV_TD3_STRESS_STARTS=$AV_TD3_STRESS_STARTS AV_TD3_STRESS_CRASHES=$AV_TD3_STRESS_CRASHES AV_TD3_STRESS_SIM_RESTARTS=$AV_TD3_STRESS_SIM_RESTARTS AV_TD3_SOAK_S=$AV_TD3_SOAK_S AV_TD3_FLOOD_S=$AV_TD3_FLOOD_S"
cd av_td3_ros
# pytest.ini's 600 s per-test timeout is for the normal suite; 50 kills take longer
# A fixed base temp dir: the trainers' logs and checkpoints of the last run stay for a post-mortem
# (pytest's numbered dirs are pruned by any later pytest run of the same user).
python -m pytest -m stress -s --timeout 1800 --basetemp "${TMPDIR:-/tmp}/av_td3_stress" test "$@"
