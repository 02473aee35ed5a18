"""
Run the nodes of a launch configuration as ``ros2 launch`` does, for machines without it.

ROS 2 from PyPI wheels has no ``ros2 launch``; ``bringup`` starts the same executables, node
names, YAML files and fixed parameters as ``launch/<name>.launch.py`` (a test keeps the two in
step)::

    bringup train_sim [--params-file F ...] [--set NODE.PARAM=VALUE ...] [--namespace NS]
    bringup actors_sim --actors 2 --role-prefix hostA_car     # simulator + policy pairs only
    bringup trainer                                           # the learner only
    bringup drive --set av_td3_policy.checkpoint_path=checkpoints/td3_step_20000.pth

By default every node runs in its own process (``ProcessBringup``): the installed executable
with ``--ros-args``, the environment of ``ros/dds.py``, each output line prefixed with the
node's name; SIGINT/SIGTERM are forwarded, and when one node exits the others are stopped and
its exit code is bringup's. ``--in-process`` runs them all on one ``PooledExecutor`` instead
(``Bringup``: the demo and tests use it to reach the node objects).

Parameters are applied as ``ros2 launch`` would, lowest precedence first: the package's
``config/<node>.yaml`` (to that node only), every ``--params-file`` in order (their sections
select the nodes), the configuration's fixed values (``role_name`` per actor), then ``--set``
(``--set NODE.P=V`` for every actor's NODE, ``--set ROLE/NODE.P=V`` for one).

Several actors (``--actors N``): each simulator + policy pair gets a role name (``role_prefix``
+ index, or ``--roles a,b``) that moves its topics to ``/carla/<role>/...`` and its nodes into
namespace ``/<role>``; the trainer is shared. One actor with the default role keeps the
default names (DESIGN §4).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
import contextlib
from dataclasses import dataclass, field
import importlib
import os
from pathlib import Path
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, TextIO

from av_td3_ros.ros.allocator import keep_large_buffers
from av_td3_ros.ros.common import check_role_name, DEFAULT_ROLE
from av_td3_ros.ros.dds import dds_environment
from av_td3_ros.ros.executor import PooledExecutor
import rclpy
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
import yaml

PACKAGE = 'av_td3_ros'
# parameters every node has without declaring them
IMPLICIT_PARAMETERS = frozenset({'use_sim_time'})


@dataclass(frozen=True)
class NodeEntry:
    """One node of a launch configuration, as its launch file starts it."""

    name: str                 # node name: the key of its section in the YAML files
    executable: str           # console script the launch file runs
    module: str               # where the node class lives
    class_name: str
    params_file: str          # config/<file> of the package
    fixed: dict[str, Any] = field(default_factory=dict)  # set by the configuration itself
    per_actor: bool = False   # one per actor (role), or one for the whole graph


SIM = NodeEntry('av_td3_sim', 'sim_node', 'av_td3_ros.ros.sim_node', 'SimNode', 'sim.yaml',
                per_actor=True)
TRAINER = NodeEntry('av_td3_trainer', 'trainer_node', 'av_td3_ros.ros.trainer_node',
                    'TrainerNode', 'trainer.yaml')


def _policy(train: bool) -> NodeEntry:
    return NodeEntry('av_td3_policy', 'policy_node', 'av_td3_ros.ros.policy_node',
                     'PolicyNode', 'policy.yaml', {'train': train}, per_actor=True)


# name -> the nodes of launch/<name>.launch.py
CONFIGURATIONS: dict[str, tuple[NodeEntry, ...]] = {
    'train_sim': (SIM, _policy(train=True), TRAINER),
    'actors_sim': (SIM, _policy(train=True)),
    'trainer': (TRAINER,),
    'drive': (_policy(train=False),),
}


@dataclass(frozen=True)
class LaunchedNode:
    """A node of a configuration as started: its entry, namespace and parameters."""

    entry: NodeEntry
    namespace: str                 # '' or '/ns/role'
    params: dict[str, Any]         # fixed values and --set, above every file

    @property
    def key(self) -> str:
        """Fully qualified name without the leading slash (``car0/av_td3_sim``)."""
        return f'{self.namespace}/{self.entry.name}'.lstrip('/')


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
    PARAM may itself contain dots (``av_td3_trainer.obs.image_size=84``); NODE may name one
    actor's node (``car1/av_td3_sim.seed=4``).
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


def actor_roles(actors: int = 1, role_prefix: str = DEFAULT_ROLE,
                roles: Sequence[str] = ()) -> list[str]:
    """Return the role names of the actors: ``roles`` if given, else prefix + index."""
    if roles:
        names = list(roles)
    elif actors < 1:
        raise ValueError(f'--actors must be at least 1, got {actors}')
    else:
        names = [role_prefix] if actors == 1 else [f'{role_prefix}{i}' for i in range(actors)]
    for name in names:
        check_role_name(name)
    if len(set(names)) != len(names):
        raise ValueError(f'role names must be distinct, got {names}')
    return names


def plan(configuration: str, overrides: dict[str, dict[str, Any]] | None = None,
         namespace: str = '', roles: Sequence[str] = (DEFAULT_ROLE,)) -> list[LaunchedNode]:
    """Return the nodes a configuration starts, with their namespaces and parameters."""
    if configuration not in CONFIGURATIONS:
        raise ValueError(f'unknown configuration {configuration!r}; one of: '
                         f'{", ".join(CONFIGURATIONS)}')
    entries = CONFIGURATIONS[configuration]
    overrides = overrides or {}
    base = '/' + namespace.strip('/') if namespace.strip('/') else ''
    # one actor with the default role: today's names, no namespace, role_name left to the files
    several = list(roles) != [DEFAULT_ROLE]
    launched, selectors = [], set()
    for entry in entries:
        for role in (roles if entry.per_actor and several else ('',)):
            own = f'{role}/{entry.name}' if role else entry.name
            selectors |= {entry.name, own}
            launched.append(LaunchedNode(
                entry, f'{base}/{role}' if role else base,
                {**entry.fixed, **({'role_name': role} if role else {}),
                 **overrides.get(entry.name, {}), **(overrides.get(own, {}) if role else {})}))
    unknown = set(overrides) - selectors
    if unknown:
        raise ValueError(f'--set names nodes not in {configuration}: {sorted(unknown)} '
                         f'(nodes: {", ".join(sorted(selectors))})')
    return launched


def _params_files(entry: NodeEntry, user_files: Sequence[Path],
                  use_default_params: bool) -> list[Path]:
    """Return the node's own YAML file (only to this node), then the user's files in order."""
    files = ([config_dir() / entry.params_file] if use_default_params else []) + list(user_files)
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f'parameters file not found: {path}')
    return files


def _ros_args(node: LaunchedNode, files: Sequence[Path]) -> list[str]:
    args = ['--ros-args']
    for path in files:
        args += ['--params-file', str(path)]
    if node.namespace:
        args += ['-r', f'__ns:={node.namespace}']
    return args


def _set_dds_environment(env: dict[str, str]) -> dict[str, str]:
    """Add the graph's DDS environment (DESIGN §4) unless the user chose something else."""
    for name, value in dds_environment(config_dir()).items():
        env.setdefault(name, value)
    return env


class Bringup:
    """
    The nodes of one configuration in this process, in a context of their own, spun together.

    ``params_files`` come after each node's default YAML file; ``overrides`` ({node: {param:
    value}}) win over everything, as ``ros2 launch`` parameters given after a params file do.
    ``ros_args`` (``--ros-args ...``) are global to the context: log levels, remappings.
    ``nodes`` maps ``LaunchedNode.key`` (``av_td3_sim``, ``car0/av_td3_sim``) to the node.
    """

    def __init__(self, configuration: str, params_files: Sequence[str | Path] = (),
                 overrides: dict[str, dict[str, Any]] | None = None, namespace: str = '',
                 use_default_params: bool = True, ros_args: Sequence[str] = (),
                 roles: Sequence[str] = (DEFAULT_ROLE,)) -> None:
        self.launched = plan(configuration, overrides, namespace, roles)
        user_files = [Path(f) for f in params_files]
        for path in user_files:
            if not path.is_file():
                raise FileNotFoundError(f'parameters file not found: {path}')
        # set before the first participant is created
        _set_dds_environment(os.environ)   # type: ignore[arg-type]
        self.context = Context()
        rclpy.init(args=list(ros_args), context=self.context)
        self.nodes: dict[str, Node] = {}
        self._thread: threading.Thread | None = None
        try:
            for launched in self.launched:
                self.nodes[launched.key] = self._create(launched, user_files,
                                                        use_default_params)
        except BaseException:
            # a node whose __init__ failed half way may fail to tear down: keep the cause
            with contextlib.suppress(Exception):
                self.shutdown()
            raise
        self.executor = PooledExecutor(num_threads=max(4, 2 * len(self.nodes)),
                                       context=self.context)
        for node in self.nodes.values():
            self.executor.add_node(node)

    def _create(self, launched: LaunchedNode, user_files: list[Path],
                use_default_params: bool) -> Node:
        entry = launched.entry
        args = _ros_args(launched, _params_files(entry, user_files, use_default_params))
        node_class = getattr(importlib.import_module(entry.module), entry.class_name)
        node = node_class(context=self.context, cli_args=args,
                          parameter_overrides=[Parameter(k, value=v)
                                               for k, v in launched.params.items()])
        unknown = sorted(name for name in launched.params if not node.has_parameter(name))
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


def _yaml_parameters(path: Path, node_name: str) -> dict[str, Any]:
    """Return {name: value} of the parameters a package YAML file lists for ``node_name``."""
    def flatten(params: dict, prefix: str = '') -> Iterable[tuple[str, Any]]:
        for key, value in params.items():
            if isinstance(value, dict):
                yield from flatten(value, f'{prefix}{key}.')
            else:
                yield f'{prefix}{key}', value
    names: dict[str, Any] = {}
    for key, section in (yaml.safe_load(path.read_text()) or {}).items():
        if key.rstrip('/').split('/')[-1] == node_name and isinstance(section, dict):
            names.update(flatten(section.get('ros__parameters') or {}))
    return names


def _typed_like(params: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``--set p=2`` for a double parameter: 2.0 (a params file does not convert it)."""
    return {name: float(value) if isinstance(defaults.get(name), float) and
            isinstance(value, int) and not isinstance(value, bool) else value
            for name, value in params.items()}


def _nested(params: dict[str, Any]) -> dict[str, Any]:
    """{'obs.image_size': 84} -> {'obs': {'image_size': 84}}: a params file's layout."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        *parents, leaf = name.split('.')
        level = out
        for parent in parents:
            level = level.setdefault(parent, {})
        level[leaf] = value
    return out


class ProcessBringup:
    """
    The nodes of one configuration, each in its own process, as ``ros2 launch`` starts them.

    Same arguments as :class:`Bringup`. Parameters that are not in a node's package YAML file
    (which lists every parameter it declares, a test checks it) are refused before anything
    starts. ``output`` receives every line of every node, prefixed with ``[<key>]``.
    """

    def __init__(self, configuration: str, params_files: Sequence[str | Path] = (),
                 overrides: dict[str, dict[str, Any]] | None = None, namespace: str = '',
                 use_default_params: bool = True, ros_args: Sequence[str] = (),
                 roles: Sequence[str] = (DEFAULT_ROLE,), env: dict[str, str] | None = None,
                 output: TextIO | None = None) -> None:
        self.launched = plan(configuration, overrides, namespace, roles)
        user_files = [Path(f).resolve() for f in params_files]
        self._tmp = tempfile.TemporaryDirectory(prefix='bringup_')
        self.commands: dict[str, list[str]] = {}
        for launched in self.launched:
            entry = launched.entry
            files = _params_files(entry, user_files, use_default_params)
            known = _yaml_parameters(config_dir() / entry.params_file, entry.name)
            unknown = sorted(set(launched.params) - set(known) - IMPLICIT_PARAMETERS)
            if unknown:
                raise ValueError(f'{entry.name} has no parameter(s) {", ".join(unknown)}')
            if launched.params:
                overlay = Path(self._tmp.name) / f'{launched.key.replace("/", "__")}.yaml'
                overlay.write_text(yaml.safe_dump({'/**': {'ros__parameters': _nested(
                    _typed_like(launched.params, known))}}))
                files.append(overlay)
            self.commands[launched.key] = (_executable(entry) + _ros_args(launched, files) +
                                           list(ros_args[1:] if ros_args else ()))
        self.env = _set_dds_environment({**(os.environ if env is None else env),
                                         'PYTHONUNBUFFERED': '1'})
        self.output = output or sys.stdout
        self.processes: dict[str, subprocess.Popen] = {}
        self._readers: list[threading.Thread] = []
        self._write_lock = threading.Lock()
        self._stop = threading.Event()

    def say(self, line: str) -> None:
        with self._write_lock:
            self.output.write(f'[bringup] {line}\n')
            self.output.flush()

    def start(self, order: Sequence[str] | None = None,
              delays: dict[str, float] | None = None) -> None:
        """Start every node (in ``order`` of keys, each after ``delays[key]`` seconds)."""
        for key in order or list(self.commands):
            if self._stop.wait((delays or {}).get(key, 0.0)):
                return
            # A session of its own: a terminal's Ctrl-C reaches bringup alone, which stops
            # each node once (a second SIGINT would cut a trainer's last checkpoint short).
            process = subprocess.Popen(
                self.commands[key], env=self.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                start_new_session=True)
            self.processes[key] = process
            self.say(f'started {key} (pid {process.pid})')
            reader = threading.Thread(target=self._forward, args=(key, process), daemon=True)
            reader.start()
            self._readers.append(reader)

    def _forward(self, key: str, process: subprocess.Popen) -> None:
        for line in process.stdout:
            with self._write_lock:
                self.output.write(f'[{key}] {line}')
                self.output.flush()

    def exited(self) -> dict[str, int]:
        """Return {key: exit code} of the nodes that have ended."""
        return {key: p.returncode for key, p in self.processes.items()
                if p.poll() is not None}

    def wait(self) -> None:
        """Block until a node exits or ``request_stop()`` is called."""
        while not self._stop.is_set():
            if self.exited():
                return
            self._stop.wait(0.1)

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self, timeout: float = 15.0) -> int:
        """
        Stop every node: SIGINT (as Ctrl-C), then SIGTERM, then SIGKILL; return an exit code.

        The code is the first nonzero one of a node that ended before the stop (it is why the
        graph stopped), else 0 when every node ended cleanly after its SIGINT.
        """
        self._stop.set()
        ended_first = self.exited()
        for sig, grace in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0),
                           (signal.SIGKILL, 5.0)):
            running = [p for p in self.processes.values() if p.poll() is None]
            if not running:
                break
            for process in running:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)
            end = time.monotonic() + grace
            for process in running:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(max(0.0, end - time.monotonic()))
            if sig != signal.SIGINT:
                self.say(f'sent {signal.Signals(sig).name} to '
                         f'{sum(p.poll() is None for p in running)} node(s) still running')
        for reader in self._readers:
            reader.join(timeout=5.0)
        codes = self.exited()
        for key, code in codes.items():
            if code != 0:
                self.say(f'{key} exited with code {code}')
        self._tmp.cleanup()
        failed = [code for key, code in ended_first.items() if code != 0]
        if failed:
            return _shell_code(failed[0])
        return next((_shell_code(c) for c in codes.values() if c != 0), 0)


def _shell_code(returncode: int) -> int:
    """Return an exit code as a shell gives it (a child killed by signal N: 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def _executable(entry: NodeEntry) -> list[str]:
    """Return the installed console script, as ``ros2 run`` finds it; else ``python -m``."""
    try:
        from ament_index_python.packages import get_package_prefix
        script = Path(get_package_prefix(PACKAGE)) / 'lib' / PACKAGE / entry.executable
    except (ImportError, LookupError, ValueError):
        script = None
    if script is not None and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, '-m', entry.module]


def main(args: list[str] | None = None) -> int:
    """Command line entry point (``bringup CONFIGURATION ...``)."""
    parser = argparse.ArgumentParser(
        prog='bringup', description='Run the nodes of a launch configuration, each in its own '
        'process as ros2 launch does (for ROS 2 without ros2 launch).')
    parser.add_argument('configuration', choices=sorted(CONFIGURATIONS))
    parser.add_argument('--params-file', action='append', default=[], metavar='FILE',
                        help='ROS 2 parameters file applied after the package defaults '
                             '(repeatable)')
    parser.add_argument('--set', action='append', default=[], metavar='NODE.PARAM=VALUE',
                        help='override one parameter of one node (repeatable; '
                             'ROLE/NODE.PARAM=VALUE for one actor)')
    parser.add_argument('--namespace', default='', help='push every node into this namespace')
    parser.add_argument('--actors', type=int, default=1,
                        help='simulator + policy pairs (each its own role and namespace)')
    parser.add_argument('--role-prefix', default=DEFAULT_ROLE,
                        help='role names are PREFIX0..PREFIX<N-1> (one actor: PREFIX)')
    parser.add_argument('--roles', default='',
                        help='comma-separated role names (instead of --actors/--role-prefix)')
    parser.add_argument('--no-default-params', action='store_true',
                        help='do not load the package config/<node>.yaml files')
    parser.add_argument('--in-process', action='store_true',
                        help='run every node in this process on one executor')
    argv = list(sys.argv[1:] if args is None else args)
    # ROS arguments (--ros-args --log-level debug, remappings, ...) apply to every node
    ros_args = argv[argv.index('--ros-args'):] if '--ros-args' in argv else []
    ns = parser.parse_args(argv[:len(argv) - len(ros_args)])
    starter = Bringup if ns.in_process else ProcessBringup
    try:
        roles = actor_roles(ns.actors, ns.role_prefix,
                            [r for r in ns.roles.split(',') if r])
        if ns.in_process:
            keep_large_buffers()
        bringup = starter(ns.configuration, ns.params_file, parse_set(ns.set), ns.namespace,
                          use_default_params=not ns.no_default_params, ros_args=ros_args,
                          roles=roles)
    except Exception as exc:  # any node that cannot start: one clear line, not a traceback
        print(f'[bringup] cannot start {ns.configuration}: {exc}', flush=True)
        raise SystemExit(2) from None
    if ns.in_process:
        try:
            bringup.spin()
        finally:
            bringup.shutdown()
        return 0
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: bringup.request_stop())
    bringup.start()
    bringup.wait()
    for key, code in bringup.exited().items():
        bringup.say(f'{key} exited with code {code}: stopping the others')
    return bringup.stop()


if __name__ == '__main__':
    sys.exit(main())
