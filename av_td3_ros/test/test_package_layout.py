"""
The package's layout by role, enforced (ROS imports, import cycles, sub-package contracts).

Only ``ros/`` and ``apps/`` import ROS, no module import cycle, and every sub-package documents
what lives there and imports only what its docstring allows.

Plain Python (``ast`` over the source files, nothing imported), so it runs without ROS. Imports
inside functions and under ``if TYPE_CHECKING:`` count too: a cycle that only a lazy import
hides is still a cycle. Each check is a function of a source tree; the ``*_fails_*`` tests run
it on a small deliberately broken tree, so a check that can no longer fail is noticed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = 'av_td3_ros'
SOURCE = Path(__file__).resolve().parents[1] / PACKAGE

# Which sub-packages may import which (sub-packages or single modules; '*' is any). The same
# table is written out in words in each sub-package's ``__init__`` docstring.
ALLOWED: dict[str, set[str]] = {
    'learning': {'driving.observation', 'formats'},
    'formats': {'learning', 'driving.observation'},
    'driving': {'learning', 'formats'},
    'sim': {'driving.observation'},
    'carla': {'sim.reward', 'driving.observation'},
    'ros': {'driving', 'learning', 'formats', 'sim', 'carla'},
    'apps': {'*'},
}
# Only these may import rclpy or ROS message/interface packages.
ROS_SUBPACKAGES = {'ros', 'apps'}
ROS_PACKAGES = {'rclpy', 'rcl_interfaces', 'builtin_interfaces', 'rosidl_parser'}


def is_ros_package(top: str) -> bool:
    """Whether a top-level import name is rclpy or a ROS message/service/interface package."""
    return top in ROS_PACKAGES or top.endswith(('_msgs', '_srvs', '_interfaces'))


def modules_of(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Map every module of the package under ``root`` (a package directory) to its file."""
    out = {}
    for path in sorted(root.rglob('*.py')):
        parts = list(path.relative_to(root).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts.pop()
        out['.'.join([package, *parts])] = path
    return out


def imports_of(path: Path, module: str, is_package: bool) -> list[tuple[str, int, bool]]:
    """
    Every (imported name, line, is a module) of a file, wherever the import statement stands.

    ``from pkg import name`` gives ``pkg`` (a module) and ``pkg.name`` (a submodule or an
    attribute: the caller knows which names are modules).
    """
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, True) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:   # relative: resolve against this module's package
                base = module.split('.') if is_package else module.split('.')[:-1]
                base = base[:len(base) - node.level + 1]
                target = '.'.join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ''
            found.append((target, node.lineno, True))
            found += [(f'{target}.{alias.name}', node.lineno, False) for alias in node.names]
    return found


def import_graph(root: Path, package: str = PACKAGE) -> dict[str, dict[str, int]]:
    """Edges module -> {imported module of the package: line}."""
    modules = modules_of(root, package)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        for name, line, _ in imports_of(path, module, path.name == '__init__.py'):
            if name in modules and name != module:
                edges.setdefault(name, line)
        # ``from pkg.sub import mod`` also yields ``pkg.sub``; keep the package only when no
        # submodule of it was meant
        for name in list(edges):
            if any(other.startswith(name + '.') and other in edges for other in edges) \
                    and modules[name].name == '__init__.py':
                del edges[name]
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (as a closed path) per strongly connected component that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:   # Tarjan
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    cycles = []
    for component in components:
        members = set(component)
        start = min(component)
        path, seen = [start], {start}
        while True:   # walk inside the component until the path closes
            nxt = next(n for n in sorted(graph[path[-1]]) if n in members)
            if nxt in seen:
                cycles.append([*path[path.index(nxt):], nxt])
                break
            path.append(nxt)
            seen.add(nxt)
    return cycles


def ros_import_violations(root: Path, package: str = PACKAGE) -> list[str]:
    """Modules outside ``ros``/``apps`` that import rclpy or ROS message packages."""
    bad = []
    for module, path in modules_of(root, package).items():
        parts = module.split('.')
        if len(parts) > 1 and parts[1] in ROS_SUBPACKAGES:
            continue
        for name, line, is_module in imports_of(path, module, path.name == '__init__.py'):
            if is_module and is_ros_package(name.split('.')[0]):
                bad.append(f'{module}:{line} imports {name}')
    return sorted(set(bad))


def subpackages_of(root: Path) -> list[Path]:
    """Direct sub-package directories of the package."""
    return sorted(p.parent for p in root.glob('*/__init__.py'))


def docstring_violations(root: Path) -> list[str]:
    """Sub-packages without an ``__init__`` docstring, and modules left flat at the top."""
    bad = []
    for sub in subpackages_of(root):
        if not ast.get_docstring(ast.parse((sub / '__init__.py').read_text())):
            bad.append(f'{sub.name}/__init__.py has no docstring')
    bad += [f'{path.name} is not in a sub-package'
            for path in sorted(root.glob('*.py')) if path.name != '__init__.py']
    return bad


def dependency_violations(root: Path, package: str = PACKAGE,
                          allowed: dict[str, set[str]] = ALLOWED) -> list[str]:
    """List imports between sub-packages that the table forbids, and undeclared sub-packages."""
    bad = [f'{sub.name}/ is not in the dependency table'
           for sub in subpackages_of(root) if sub.name not in allowed]
    for module, edges in import_graph(root, package).items():
        parts = module.split('.')
        if len(parts) < 2 or parts[1] not in allowed:
            continue
        own = parts[1]
        for target, line in edges.items():
            rel = target.split('.')[1:]
            if not rel or rel[0] == own:   # the package root (__version__) or itself
                continue
            ok = allowed[own]
            if '*' in ok or any(rel[:len(a.split('.'))] == a.split('.') for a in ok):
                continue
            bad.append(f'{module}:{line} imports {target} ({own} may import '
                       f'{", ".join(sorted(ok))})')
    return bad


# ------------------------------------------------------------------ the package itself

def test_only_ros_and_apps_import_rclpy():
    assert ros_import_violations(SOURCE) == []


def test_no_import_cycle():
    cycles = find_cycles(import_graph(SOURCE))
    assert not cycles, 'import cycles: ' + '; '.join(' -> '.join(c) for c in cycles)


def test_every_subpackage_says_what_lives_there():
    assert docstring_violations(SOURCE) == []
    assert {sub.name for sub in subpackages_of(SOURCE)} == set(ALLOWED)


def test_subpackages_import_only_what_they_may():
    assert dependency_violations(SOURCE) == []


def test_docstrings_name_the_allowed_imports():
    for name, allowed in ALLOWED.items():
        doc = ast.get_docstring(ast.parse((SOURCE / name / '__init__.py').read_text()))
        missing = [a for a in allowed if a != '*' and f'``{a}``' not in doc]
        assert not missing, f'{name}/__init__.py does not mention {missing}'


# ------------------------------------------------------------------ each check can fail

def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / PACKAGE
    for rel, text in {'__init__.py': '"""Top."""\n', **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_rclpy_check_fails_on_a_lazy_import_outside_ros(tmp_path):
    root = _tree(tmp_path, {
        'learning/__init__.py': '"""L."""\n',
        'learning/bad.py': 'def f():\n    from rclpy.node import Node\n    return Node\n',
        'driving/__init__.py': '"""D."""\n',
        'driving/msgs.py': 'import sensor_msgs.msg\n',
        'ros/__init__.py': '"""R."""\n',
        'ros/node.py': 'import rclpy\n'})
    assert ros_import_violations(root) == [
        f'{PACKAGE}.driving.msgs:1 imports sensor_msgs.msg',
        f'{PACKAGE}.learning.bad:2 imports rclpy.node']


@pytest.mark.parametrize('lazy', [False, True])
def test_cycle_check_fails_and_names_the_cycle(tmp_path, lazy):
    back = ('def g():\n    from av_td3_ros.formats import a\n' if lazy
            else 'from av_td3_ros.formats import a\n')
    root = _tree(tmp_path, {
        'formats/__init__.py': '"""F."""\n',
        'formats/a.py': 'from av_td3_ros.formats.b import x\n',
        'formats/b.py': back + 'x = 1\n',
        'formats/c.py': 'from . import a\n'})
    assert find_cycles(import_graph(root)) == [
        [f'{PACKAGE}.formats.a', f'{PACKAGE}.formats.b', f'{PACKAGE}.formats.a']]


def test_docstring_check_fails_on_a_bare_init_and_a_flat_module(tmp_path):
    root = _tree(tmp_path, {'sim/__init__.py': 'X = 1\n', 'stray.py': ''})
    assert docstring_violations(root) == ['sim/__init__.py has no docstring',
                                          'stray.py is not in a sub-package']


def test_dependency_check_fails_on_an_import_the_table_forbids(tmp_path):
    root = _tree(tmp_path, {
        'sim/__init__.py': '"""S."""\n',
        'sim/env.py': 'from av_td3_ros.learning.td3 import TD3\n'
                      'from av_td3_ros.driving.observation import build_vector\n',
        'learning/__init__.py': '"""L."""\n',
        'learning/td3.py': 'from av_td3_ros.driving import policy\n',
        'driving/__init__.py': '"""D."""\n',
        'driving/observation.py': '',
        'driving/policy.py': '',
        'extra/__init__.py': '"""E."""\n'})
    assert dependency_violations(root) == [
        'extra/ is not in the dependency table',
        f'{PACKAGE}.learning.td3:1 imports {PACKAGE}.driving.policy (learning may import '
        'driving.observation, formats)',
        f'{PACKAGE}.sim.env:1 imports {PACKAGE}.learning.td3 (sim may import '
        'driving.observation)']
