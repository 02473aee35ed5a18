# Sourced by run_tests.sh and run_stress.sh (from the repository root): real DDS isolated from
# other runs on this machine, a ROS domain of its own and discovery kept on the host.
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 1 ))}
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
export FASTDDS_BUILTIN_TRANSPORTS=${FASTDDS_BUILTIN_TRANSPORTS:-LARGE_DATA}
# camera-sized messages: a shared-memory segment that holds them (see the file's comment)
export FASTDDS_DEFAULT_PROFILES_FILE=${FASTDDS_DEFAULT_PROFILES_FILE:-$PWD/av_td3_ros/config/fastdds.xml}
export PYTHONUNBUFFERED=1
