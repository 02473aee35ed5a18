# Source me: activates .venv (when it exists) and the colcon workspace, and puts the package's
# executables on PATH.
_av_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -f "$_av_root/.venv/bin/activate" ]; then
  # shellcheck disable=SC1091
  source "$_av_root/.venv/bin/activate"
  export AMENT_PREFIX_PATH="$_av_root/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
fi
# shellcheck disable=SC1091
source "$_av_root/install/setup.bash"
# the package's executables (bringup, checkpoint_tool, ...) by name, as `ros2 run` would find them
export PATH="$_av_root/install/av_td3_ros/lib/av_td3_ros:$PATH"
unset _av_root
