# Source me: activates .venv (when it exists) and the colcon workspace.
_av_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -f "$_av_root/.venv/bin/activate" ]; then
  # shellcheck disable=SC1091
  source "$_av_root/.venv/bin/activate"
  export AMENT_PREFIX_PATH="$_av_root/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
fi
# shellcheck disable=SC1091
source "$_av_root/install/setup.bash"
unset _av_root
