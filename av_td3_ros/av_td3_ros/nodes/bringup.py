"""
Run the nodes of a launch configuration in one process, from the launch files' YAML files.

For machines with ROS 2 from PyPI wheels, which have no ``ros2 launch``::

    bringup train_sim [--params-file F ...] [--set NODE.PARAM=VALUE ...] [--namespace NS]
    bringup drive --set av_td3_policy.checkpoint_path=checkpoints/td3_step_20000.pth

Each configuration names the same executables, node names, YAML files and fixed parameters as
its launch file (``launch/<name>.launch.py``; a test keeps the two in step). Parameters are applied
as ``ros2 launch`` would, lowest precedence first: the package's ``config/<node>.yaml`` (to that
node only), every ``--params-file`` in order (to every node; their sections select nodes), the
configuration's fixed values, then ``--set``. All nodes share one ``PooledExecutor`` (rclpy's
MultiThreadedExecutor without its re-dispatch storm); nodes keep their own callback groups and
threads.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
import contextlib
from dataclasses import dataclass, field
import importlib
import os
from pathlib import Path
import sys
import threading
from typing import Any

from av_td3_ros.nodes.allocator import keep_large_buffers
from av_td3_ros.nodes.executor import PooledExecutor
import rclpy
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
import yaml

PACKAGE = 'av_td3_ros'


@dataclass(frozen=True)
class NodeEntry:
    """One node of a launch configuration, as its launch file starts it."""

    name: str                 # node name: the key of its section in the YAML files
    executable: str           # console script the launch file runs
    module: str               # where the node class lives
    class_name: str
    params_file: str          # config/<file> of the package
    fixed: dict[str, Any] = field(default_factory=dict)  # set by the configuration itself


SIM = NodeEntry('av_td3_sim', 'sim_node', 'av_td3_ros.nodes.sim_node', 'SimNode', 'sim.yaml')
TRAINER = NodeEntry('av_td3_trainer', 'trainer_node', 'av_td3_ros.nodes.trainer_node',
                    'TrainerNode', 'trainer.yaml')


def _policy(mode: str) -> NodeEntry:
    return NodeEntry('av_td3_policy', 'policy_node', 'av_td3_ros.nodes.policy_node',
                     'PolicyNode', 'policy.yaml', {'mode': mode})


# name -> the nodes of launch/<name>.launch.py
CONFIGURATIONS: dict[str, tuple[NodeEntry, ...]] = {
    'train_sim': (SIM, _policy('train'), TRAINER),
    'drive': (_policy('deploy'),),
}


def config_dir() -> Path:
    """Return the package's config directory: installed share dir, else the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory
        share = Path(get_package_share_directory(PACKAGE)) / 'config'
    except (ImportError, LookupError, ValueError):
        share = None
    source = Path(__file__).resolve().parents[2] / 'config'
    # a symlink-install share dir only holds files that existed at build time
    if source.is_dir():
        return source
    if share is not None and share.is_dir():
        return share
    raise FileNotFoundError(f'no config directory for {PACKAGE} (looked in {source}, {share})')


def parse_set(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """
    Parse ``NODE.PARAM=VALUE`` overrides into {node: {param: value}}.

    VALUE is read as YAML (``3``, ``0.5``, ``true``, ``[a, b]``, ``text``), as in a params file.
    PARAM may itself contain dots (``av_td3_trainer.obs.image_size=84``).
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition('=')
        node, dot, param = key.partition('.')
        if not sep or not dot or not node or not param:
            raise ValueError(f'--set {item!r}: expected NODE.PARAM=VALUE')
        try:
            parsed = yaml.safe_load(value) if value else ''
        except yaml.YAMLError as exc:
            raise ValueError(f'--set {item!r}: value is not valid YAML ({exc})') from None
        out.setdefault(node, {})[param] = parsed
    return out


class Bringup:
    """
    The nodes of one configuration, created in a context of their own and spun together.

    ``params_files`` come after each node's default YAML file; ``overrides`` ({node: {param:
    value}}) win over everything, as ``ros2 launch`` parameters given after a params file do.
    ``ros_args`` (``--ros-args ...``) are global to the context: log levels, remappings.
    """

    def __init__(self, configuration: str, params_files: Sequence[str | Path] = (),
                 overrides: dict[str, dict[str, Any]] | None = None, namespace: str = '',
                 use_default_params: bool = True, ros_args: Sequence[str] = ()) -> None:
        if configuration not in CONFIGURATIONS:
            raise ValueError(f'unknown configuration {configuration!r}; one of: '
                             f'{", ".join(CONFIGURATIONS)}')
        self.entries = CONFIGURATIONS[configuration]
        overrides = overrides or {}
        unknown = set(overrides) - {entry.name for entry in self.entries}
        if unknown:
            raise ValueError(f'--set names nodes not in {configuration}: {sorted(unknown)} '
                             f'(nodes: {", ".join(e.name for e in self.entries)})')
        user_files = [Path(f) for f in params_files]
        for path in user_files:
            if not path.is_file():
                raise FileNotFoundError(f'parameters file not found: {path}')
        # Large images over Fast DDS need its large-data transports (DESIGN §4); set before the
        # first participant is created, unless the user chose something else.
        os.environ.setdefault('FASTDDS_BUILTIN_TRANSPORTS', 'LARGE_DATA')
        # ... and a shared-memory segment that holds them, or the small reliable topics beside
        # the images (odometry, feedback, control) stall for seconds (see config/fastdds.xml).
        os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(config_dir() / 'fastdds.xml'))
        self.context = Context()
        rclpy.init(args=list(ros_args), context=self.context)
        self.nodes: dict[str, Node] = {}
        self._thread: threading.Thread | None = None
        try:
            for entry in self.entries:
                self.nodes[entry.name] = self._create(
                    entry, user_files, {**entry.fixed, **overrides.get(entry.name, {})},
                    namespace, use_default_params)
        except BaseException:
            # a node whose __init__ failed half way may fail to tear down: keep the cause
            with contextlib.suppress(Exception):
                self.shutdown()
            raise
        self.executor = PooledExecutor(num_threads=max(4, 2 * len(self.nodes)),
                                       context=self.context)
        for node in self.nodes.values():
            self.executor.add_node(node)

    def _create(self, entry: NodeEntry, user_files: list[Path], params: dict[str, Any],
                namespace: str, use_default_params: bool) -> Node:
        # Node-specific arguments, as a launch file gives them: the node's own YAML file (only
        # to this node), then the user's files in order (their sections select the nodes);
        # parameter_overrides (fixed values, --set) win over all files.
        files = ([config_dir() / entry.params_file] if use_default_params else []) + user_files
        for path in files:
            if not path.is_file():
                raise FileNotFoundError(f'parameters file not found: {path}')
        args = ['--ros-args']
        for path in files:
            args += ['--params-file', str(path)]
        if namespace:
            args += ['-r', f'__ns:={namespace}']
        node_class = getattr(importlib.import_module(entry.module), entry.class_name)
        node = node_class(context=self.context, cli_args=args,
                          parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        unknown = sorted(name for name in params if not node.has_parameter(name))
        if unknown:  # rclpy ignores overrides of undeclared parameters: a typo would pass
            node.destroy_node()
            raise ValueError(f'{entry.name} has no parameter(s) {", ".join(unknown)}')
        return node

    def spin(self) -> None:
        """Spin all nodes in the calling thread until shutdown."""
        with contextlib.suppress(KeyboardInterrupt, ExternalShutdownException):
            self.executor.spin()

    def spin_in_background(self) -> None:
        """Spin in a daemon thread (for the demo and tests)."""
        self._thread = threading.Thread(target=self.spin, name='bringup-executor', daemon=True)
        self._thread.start()

    def add_node(self, node: Node) -> None:
        """Spin another node (e.g. a monitor) with the configuration's nodes."""
        self.executor.add_node(node)

    def shutdown(self) -> None:
        """Stop spinning, destroy the nodes (the trainer finishes its checkpoint writes), end."""
        executor = getattr(self, 'executor', None)
        if executor is not None:
            executor.shutdown(timeout_sec=10.0)
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            self._thread = None
        for node in reversed(list(self.nodes.values())):
            node.destroy_node()
        self.nodes.clear()
        self.context.try_shutdown()


def main(args: list[str] | None = None) -> None:
    """Command line entry point (``bringup CONFIGURATION ...``)."""
    keep_large_buffers()
    parser = argparse.ArgumentParser(
        prog='bringup', description='Run the nodes of a launch configuration in one process '
        '(for ROS 2 without ros2 launch).')
    parser.add_argument('configuration', choices=sorted(CONFIGURATIONS))
    parser.add_argument('--params-file', action='append', default=[], metavar='FILE',
                        help='ROS 2 parameters file applied after the package defaults '
                             '(repeatable)')
    parser.add_argument('--set', action='append', default=[], metavar='NODE.PARAM=VALUE',
                        help='override one parameter of one node (repeatable)')
    parser.add_argument('--namespace', default='', help='push every node into this namespace')
    parser.add_argument('--no-default-params', action='store_true',
                        help='do not load the package config/<node>.yaml files')
    argv = list(sys.argv[1:] if args is None else args)
    # ROS arguments (--ros-args --log-level debug, remappings, ...) apply to every node
    ros_args = argv[argv.index('--ros-args'):] if '--ros-args' in argv else []
    ns = parser.parse_args(argv[:len(argv) - len(ros_args)])
    try:
        bringup = Bringup(ns.configuration, ns.params_file, parse_set(ns.set), ns.namespace,
                          use_default_params=not ns.no_default_params, ros_args=ros_args)
    except Exception as exc:  # any node that cannot start: one clear line, not a traceback
        print(f'[bringup] cannot start {ns.configuration}: {exc}', flush=True)
        raise SystemExit(2) from None
    try:
        bringup.spin()
    finally:
        bringup.shutdown()


if __name__ == '__main__':
    main()
