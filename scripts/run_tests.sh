#!/usr/bin/env bash
# The whole test suite over real DDS, isolated from other runs on this machine:
# a ROS domain of its own and discovery kept on the host.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/test_env.sh
source scripts/test_env.sh
echo "[test] ROS_DOMAIN_ID=$ROS_DOMAIN_ID"
# Run from the package directory, as `colcon test` does: the ament linters scan the cwd.
cd av_td3_ros
# The end-to-end graph test runs in a process of its own: it brings up three nodes and a
# learner thread, and state left in the interpreter by the ~270 tests before it (threads, DDS
# participants) has made it miss its deadline. Then the rest of the suite.
status=0
# A failed test is retried up to twice and reported as rerun; one that fails three times fails
# the run. Before ros/executor.py (rclpy's MultiThreadedExecutor starved in-process graphs),
# DDS timing failed a different test in each full run here; since, full runs needed no retry.
RERUNS=(--reruns 2 --reruns-delay 1)
python -m pytest "${RERUNS[@]}" test/test_e2e.py "$@" || status=$?
python -m pytest "${RERUNS[@]}" test --ignore=test/test_e2e.py "$@" || status=$?
exit $status
