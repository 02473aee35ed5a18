"""ament copyright check; PyPI has no ament_copyright, so it skips with the reason there."""

import pytest

ament_copyright = pytest.importorskip(
    'ament_copyright.main', reason='ament_copyright is not installed (not on PyPI); '
    'it runs on a machine with a ROS 2 distro')


@pytest.mark.copyright
@pytest.mark.linter
def test_copyright():
    rc = ament_copyright.main(argv=['.', 'test'])
    assert rc == 0, 'Found errors'
