"""
The Fast DDS environment every process of the graph runs with (launch files and ``bringup``).

Camera-sized messages need Fast DDS's large-data transports and a shared-memory segment that
holds a whole 800x600 ``bgra8`` frame (``config/fastdds.xml``: 32 MB segment, plus UDPv4 for
peers on other hosts); without the segment the small reliable topics beside the images stall
(DESIGN §4). Humble's Fast DDS reads ``FASTRTPS_DEFAULT_PROFILES_FILE`` and ignores
``FASTDDS_BUILTIN_TRANSPORTS``. Plain Python, so launch files import it too.
"""

from __future__ import annotations

import os


def dds_environment(config_dir: str | os.PathLike) -> dict[str, str]:
    """Return the environment variables for the package's Fast DDS profile in ``config_dir``."""
    profile = os.path.join(os.fspath(config_dir), 'fastdds.xml')
    env = {'FASTDDS_BUILTIN_TRANSPORTS': 'LARGE_DATA', 'FASTDDS_DEFAULT_PROFILES_FILE': profile}
    if os.environ.get('ROS_DISTRO') == 'humble':   # newer Fast DDS warns that it is deprecated
        env['FASTRTPS_DEFAULT_PROFILES_FILE'] = profile
    return env
