"""
Launch files, bringup and config YAML agree with the nodes, without the launch package.

ROS 2 from PyPI wheels has no ``launch``; so the launch files are parsed (ast) rather than run:
every executable they start is an installed entry point, ``bringup`` starts the same nodes with the
same fixed parameters and YAML files, and every parameter in every config YAML is declared by the
real node (instantiated with real rclpy and that YAML) and, for a node's own YAML, vice versa.
"""

import ast
from dataclasses import dataclass, field
import importlib
import inspect
from pathlib import Path
from typing import Any

from ament_index_python.packages import get_package_prefix
from av_td3_ros.ros.bringup import CONFIGURATIONS, parse_set
import pytest
import rclpy
from rclpy.context import Context
from rclpy.node import Node
from rclpy.parameter import Parameter
import yaml

PKG = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((PKG / 'launch').glob('*.launch.py'))
CONFIG_DIR = PKG / 'config'
# parameters every node has, or that ROS adds, which no YAML needs to list
IMPLICIT = {'use_sim_time', 'start_type_description_service'}
# params files whose single section is '/**' (a file for one node's parameters, used as an
# overlay with --params-file): which node they are for
WILDCARD_FILES = {'td3.yaml': 'av_td3_trainer'}
# nodes that cannot be built here without their external stack; their YAML is checked by
# their own tests (named), with the stand-in those need
CHECKED_ELSEWHERE = {'av_td3_carla_episode': 'test_carla_episode.py (CARLA stand-in)'}


def entry_points() -> dict[str, str]:
    """Return console scripts of setup.py: {executable: 'module:function'}."""
    tree = ast.parse((PKG / 'setup.py').read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == 'console_scripts':
                    scripts = [ast.literal_eval(v) for v in value.elts]
                    return {s.split('=')[0].strip(): s.split('=')[1].strip() for s in scripts}
    raise AssertionError('setup.py declares no console_scripts')


@dataclass
class LaunchNode:
    """A launch_ros Node action, as far as it can be read without running it."""

    package: str
    executable: str
    name: str
    literal_params: dict[str, Any] = field(default_factory=dict)
    argument_params: dict[str, str] = field(default_factory=dict)   # param -> launch argument
    params_files: list[str] = field(default_factory=list)           # YAML file names


def _call_name(node: ast.AST) -> str:
    if isinstance(node, ast.Call):
        func = node.func
        return func.id if isinstance(func, ast.Name) else getattr(func, 'attr', '')
    return ''


def parse_launch(path: Path) -> tuple[list[LaunchNode], dict[str, Any]]:
    """Return the Node actions of a launch file and its launch arguments' defaults."""
    tree = ast.parse(path.read_text(), filename=str(path))
    assigned = {t.id: n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                for t in n.targets if isinstance(t, ast.Name)}
    arguments: dict[str, ast.AST | None] = {}
    for call in ast.walk(tree):
        if _call_name(call) == 'DeclareLaunchArgument' and isinstance(call.args[0], ast.Constant):
            default = next((k.value for k in call.keywords if k.arg == 'default_value'), None)
            arguments[call.args[0].value] = default

    def resolve(expr: ast.AST) -> tuple[str, Any]:
        if isinstance(expr, ast.Name) and expr.id in assigned:
            return resolve(assigned[expr.id])
        if isinstance(expr, ast.Constant):
            return 'literal', expr.value
        if _call_name(expr) == 'LaunchConfiguration':
            return 'argument', ast.literal_eval(expr.args[0])
        if _call_name(expr) == 'ParameterValue':
            return resolve(expr.args[0])
        return 'other', None

    def yaml_names(expr: ast.AST) -> list[str]:
        kind, value = resolve(expr)
        if kind == 'argument' and arguments.get(value) is not None:
            expr = arguments[value]
        return [n.value for n in ast.walk(expr) if isinstance(n, ast.Constant)
                and isinstance(n.value, str) and n.value.endswith('.yaml')]

    nodes = []
    for call in ast.walk(tree):
        if _call_name(call) != 'Node':
            continue
        kw = {k.arg: k.value for k in call.keywords}
        node = LaunchNode(*(ast.literal_eval(kw[k]) for k in ('package', 'executable', 'name')))
        for item in getattr(kw.get('parameters'), 'elts', []):
            if isinstance(item, ast.Dict):
                for key, value in zip(item.keys, item.values, strict=True):
                    kind, resolved = resolve(value)
                    target = node.literal_params if kind == 'literal' else node.argument_params
                    target[ast.literal_eval(key)] = resolved
            else:
                node.params_files += yaml_names(item)
        nodes.append(node)
    defaults = {name: resolve(expr)[1] if expr is not None else None
                for name, expr in arguments.items()}
    return nodes, defaults


def node_class(executable: str) -> type:
    """Return the Node subclass defined in the module of an executable's entry point."""
    module = importlib.import_module(entry_points()[executable].split(':')[0])
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass)
               if issubclass(c, Node) and c.__module__ == module.__name__]
    assert len(classes) == 1, f'{module.__name__} defines {len(classes)} node classes'
    return classes[0]


def params_sections(path: Path) -> dict[str, dict[str, Any]]:
    """Return {node name: flat parameters} of a ROS 2 params file ({} if it is not one)."""
    data = yaml.safe_load(path.read_text()) or {}
    out = {}
    for key, section in data.items():
        if not isinstance(section, dict) or 'ros__parameters' not in section:
            return {}
        name = key.rstrip('/').split('/')[-1]
        if name == '**':
            assert path.name in WILDCARD_FILES, f'{path.name}: a /** section for which node?'
            name = WILDCARD_FILES[path.name]
        out.setdefault(name, {}).update(_flatten(section['ros__parameters']))
    return out


def _flatten(params: dict, prefix: str = '') -> dict[str, Any]:
    out = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f'{prefix}{key}.'))
        else:
            out[f'{prefix}{key}'] = value
    return out


def all_launch_nodes() -> list[LaunchNode]:
    return [n for path in LAUNCH_FILES for n in parse_launch(path)[0]]


def own_nodes() -> dict[str, str]:
    """Return {node name: executable} of this package's nodes, from launch files and bringup."""
    names = {n.name: n.executable for n in all_launch_nodes() if n.package == 'av_td3_ros'}
    for entries in CONFIGURATIONS.values():
        names.update({e.name: e.executable for e in entries})
    return names


def default_yaml(name: str) -> Path:
    """Return a node's own params file: config/<name without the av_td3_ prefix>.yaml."""
    return CONFIG_DIR / f'{name.removeprefix("av_td3_")}.yaml'


@pytest.fixture(scope='module')
def declared() -> dict[str, set[str]]:
    """Instantiate every node with its own YAML file; return its declared parameter names."""
    out = {}
    for name, executable in own_nodes().items():
        if name in CHECKED_ELSEWHERE:
            continue
        context = Context()
        rclpy.init(context=context)
        try:
            # the trainer's default 1 M-transition buffer is 7.5 GB of (lazily zeroed) memory;
            # a small one keeps the test fit for small CI machines (others ignore the override)
            node = node_class(executable)(
                context=context,
                cli_args=['--ros-args', '--params-file', str(default_yaml(name))],
                parameter_overrides=[Parameter('buffer_capacity', value=10_000)])
            out[name] = set(node.list_parameters([], 0).names)
            node.destroy_node()
        finally:
            context.try_shutdown()
    return out


def test_there_are_launch_files():
    names = {p.name for p in LAUNCH_FILES}
    assert {f'{c}.launch.py' for c in CONFIGURATIONS} <= names


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_executables_are_installed_entry_points(path):
    nodes, _ = parse_launch(path)
    assert nodes, f'{path.name} starts no Node'
    scripts = entry_points()
    lib = Path(get_package_prefix('av_td3_ros')) / 'lib' / 'av_td3_ros'
    for node in nodes:
        if node.package != 'av_td3_ros':
            continue
        assert node.executable in scripts, f'{node.executable} is not in setup.py'
        assert (lib / node.executable).is_file(), f'{node.executable} is not installed in {lib}'
        module, function = scripts[node.executable].split(':')
        assert callable(getattr(importlib.import_module(module), function))


@pytest.mark.parametrize('configuration', sorted(CONFIGURATIONS))
def test_bringup_starts_what_the_launch_file_starts(configuration):
    nodes, _ = parse_launch(PKG / 'launch' / f'{configuration}.launch.py')
    entries = CONFIGURATIONS[configuration]
    assert sorted((n.executable, n.name) for n in nodes) == \
        sorted((e.executable, e.name) for e in entries)
    by_name = {n.name: n for n in nodes}
    for entry in entries:
        launched = by_name[entry.name]
        assert launched.literal_params == entry.fixed, entry.name
        assert launched.params_files == [entry.params_file], entry.name
        assert CONFIG_DIR / entry.params_file == default_yaml(entry.name)
        assert node_class(entry.executable).__name__ == entry.class_name


def test_each_node_yaml_lists_exactly_the_declared_parameters(declared):
    for name, params in declared.items():
        in_yaml = set(params_sections(default_yaml(name)).get(name, {}))
        assert in_yaml, f'{default_yaml(name).name} has no section for {name}'
        missing = params - in_yaml - IMPLICIT
        assert not missing, f'{name}: declared but not in {default_yaml(name).name}: {missing}'
        unknown = in_yaml - params
        assert not unknown, f'{name}: in {default_yaml(name).name} but not declared: {unknown}'


@pytest.mark.parametrize('path', sorted(CONFIG_DIR.glob('*.yaml')), ids=lambda p: p.name)
def test_every_yaml_parameter_is_declared(path, declared):
    for name, params in params_sections(path).items():
        if name in CHECKED_ELSEWHERE:
            continue
        assert name in declared, f'{path.name}: section for unknown node {name}'
        unknown = set(params) - declared[name]
        assert not unknown, f'{path.name}: {name} does not declare {sorted(unknown)}'


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_parameters_are_declared_and_defaults_match_the_yaml(path, declared):
    nodes, defaults = parse_launch(path)
    for node in nodes:
        if node.package != 'av_td3_ros' or node.name in CHECKED_ELSEWHERE:
            continue
        given = set(node.literal_params) | set(node.argument_params)
        assert given <= declared[node.name], f'{node.name}: {given - declared[node.name]}'
        yaml_values = params_sections(default_yaml(node.name))[node.name]
        for param, argument in node.argument_params.items():
            default = defaults.get(argument)
            if isinstance(default, str):  # ros2 launch reads argument strings as YAML
                assert parse_set([f'n.p={default}'])['n']['p'] == yaml_values[param], \
                    f'{path.name}: {argument} defaults to {default!r}, ' \
                    f'{default_yaml(node.name).name} has {param}: {yaml_values[param]!r}'


@pytest.mark.parametrize('path', [p for p in LAUNCH_FILES if p.name != 'train_carla.launch.py'],
                         ids=lambda p: p.name)
def test_launch_files_set_the_dds_environment_bringup_sets(path):
    # train_carla includes drive_carla, which sets it for every process it starts
    calls = [n for n in ast.walk(ast.parse(path.read_text())) if _call_name(n) ==
             'dds_environment']
    assert calls, f'{path.name} does not set the environment of ros/dds.py'
