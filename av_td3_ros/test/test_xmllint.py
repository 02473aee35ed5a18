"""ament xmllint over package.xml; skips with the reason where ament_xmllint is absent."""

import pytest

ament_xmllint = pytest.importorskip(
    'ament_xmllint.main',
    reason='ament_xmllint is not installed here; it runs with a ROS 2 distro')


@pytest.mark.linter
@pytest.mark.xmllint
def test_xmllint():
    rc = ament_xmllint.main(argv=[])
    assert rc == 0, 'Found errors'
