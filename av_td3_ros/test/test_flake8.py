"""ament flake8 over the package (the standard ament_python linter test)."""

import subprocess
import sys

import pytest


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8():
    # In a fresh interpreter: flake8 forks worker processes, and forking this test process
    # (DDS and torch threads already running from earlier tests) can crash the children.
    result = subprocess.run(
        [sys.executable, '-c',
         'import sys; from ament_flake8.main import main; sys.exit(main(argv=[]))'],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f'Found code style errors / warnings:\n{result.stdout}'
