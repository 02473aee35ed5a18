"""
emulated_hosts: hosts distinct to DDS, UDP between hosts and SHM within one, link cuts.

Real rclpy processes (test/emulated_hosts_peers.py) in network + mount namespaces of their own;
needs root (skipped with the reason otherwise).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
import subprocess
import sys
import time

import emulated_hosts
from emulated_hosts import EmulatedNetwork
import pytest

pytestmark = pytest.mark.ros

PEERS = Path(__file__).resolve().with_name('emulated_hosts_peers.py')
SIZE = 35000
# Any id: nothing outside the test's namespaces can hear these hosts.
DOMAIN = os.environ.get('ROS_DOMAIN_ID', '0')


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Return pytest's tmp_path; skip (with the reason) where namespaces are not usable."""
    emulated_hosts.require()
    return tmp_path


def _netns() -> list[str]:
    out = subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _start(net: EmulatedNetwork, host: str, out: Path, *args: str) -> subprocess.Popen:
    with open(out, 'w') as f:
        return net.popen(host, [sys.executable, str(PEERS), *args],
                         stdout=f, stderr=subprocess.STDOUT)


def _lines(path: Path, kind: str) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()
            if line.startswith(kind + ' ')]


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f'timed out ({timeout} s) waiting for {what}'
        time.sleep(0.2)


def test_hosts_have_own_machine_id_and_dev_shm(workdir):
    with EmulatedNetwork(['a', 'b'], workdir=workdir, domain_id=DOMAIN) as net:
        ids = {h: net.run(h, ['cat', '/etc/machine-id']).stdout.strip() for h in net.hosts}
        assert ids == {h: net.machine_id(h) for h in net.hosts}
        assert len({*ids.values(), Path('/etc/machine-id').read_text().strip()}) == 3
        assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids.values())
        # Two processes of one host share /dev/shm (the first still runs while the second
        # reads); the other host and the root namespace do not see it.
        marker = f'avh-marker-{net.tag}'
        writer = net.popen('a', ['sh', '-c', f'echo from-a > /dev/shm/{marker} && exec sleep 60'])
        _wait_for(lambda: (net.shm_dir('a') / marker).exists(), 10, 'the marker')
        assert net.run('a', ['cat', f'/dev/shm/{marker}']).stdout == 'from-a\n'
        assert writer.poll() is None
        probe = f'test -e /dev/shm/{marker} && echo seen || echo absent'
        assert net.run('b', ['sh', '-c', probe]).stdout == 'absent\n'
        assert not Path('/dev/shm', marker).exists()
        # Each host: lo and eth0 with its own address, the multicast route for discovery.
        for host in net.hosts:
            addr = net.run(host, ['ip', '-4', '-o', 'addr', 'show']).stdout
            assert f'inet {net.address(host)}/24' in addr and ' lo ' in addr
            assert '224.0.0.0/4 dev eth0' in net.run(host, ['ip', 'route']).stdout
        assert net.address('a') != net.address('b')


def test_messages_cross_hosts_on_udp_and_use_shm_within_a_host(workdir):
    count = 100
    with EmulatedNetwork(['a', 'b'], workdir=workdir, domain_id=DOMAIN) as net:
        eth0, lo = net.link_stats('a'), net.link_stats('a', 'lo')
        started = time.monotonic()
        _start(net, 'b', workdir / 'sub_b.out', 'sub')
        _start(net, 'a', workdir / 'sub_a.out', 'sub')
        _start(net, 'a', workdir / 'pub.out', 'pub', '--count', str(count), '--wait-subs', '2',
               '--size', str(SIZE))

        def received(name: str) -> int:
            return len(_lines(workdir / name, 'big'))

        def all_in() -> bool:
            return min(received('sub_a.out'), received('sub_b.out')) >= count

        with contextlib.suppress(AssertionError):  # counted below
            _wait_for(lambda: 'done' in (workdir / 'pub.out').read_text(), 30, 'the publisher')
            _wait_for(all_in, 5, 'all messages')
        elapsed = time.monotonic() - started
        eth0_after, lo_after = net.link_stats('a'), net.link_stats('a', 'lo')
        got = {n: {k: len({x[1] for x in _lines(workdir / f'{n}.out', k)})
                   for k in ('big', 'small')} for n in ('sub_a', 'sub_b')}
        big_b = _lines(workdir / 'sub_b.out', 'big')
        latency = sorted(float(x[3]) - float(x[4]) for x in big_b)
        eth0_tx = eth0_after['tx_bytes'] - eth0['tx_bytes']
        lo_tx = lo_after['tx_bytes'] - lo['tx_bytes']
        shm = {h: sorted(p.name for p in net.shm_dir(h).iterdir()) for h in net.hosts}
        print(f'\n[emulated hosts] {count} x ({SIZE} B + small) at 20 Hz in {elapsed:.1f} s: '
              f'received {got}; b big latency p50 {latency[len(latency) // 2] * 1e3:.1f} ms '
              f'max {latency[-1] * 1e3:.1f} ms; host a eth0 tx {eth0_tx} B, lo tx {lo_tx} B')
    for name in ('sub_a', 'sub_b'):
        assert min(got[name].values()) >= 0.95 * count, (name, got)
    assert all(len(x[2]) == len(str(SIZE)) and int(x[2]) == SIZE for x in big_b)
    # Across hosts over the veth (UDP: the only network transport in config/fastdds.xml): at
    # least one copy of every big message left host a on eth0 ...
    assert eth0_tx >= 0.95 * got['sub_b']['big'] * SIZE
    # ... while host a's own subscriber got its copies over shared memory, not loopback UDP.
    assert lo_tx < 0.2 * got['sub_a']['big'] * SIZE
    # Fast DDS used each host's own /dev/shm (its segments and port files are there).
    for host in ('a', 'b'):
        assert any(n.startswith('fastdds_port') for n in shm[host]), shm


def _arrivals(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Return (seq, receive time) per kind from a subscriber's output."""
    return {'small': [(int(x[1]), float(x[2])) for x in _lines(path, 'small')],
            'big': [(int(x[1]), float(x[3])) for x in _lines(path, 'big')]}


def test_link_cut_stops_delivery_and_it_resumes_after_restore(workdir):
    cut_for = 4.0
    with EmulatedNetwork(['a', 'b', 'c'], workdir=workdir, domain_id=DOMAIN) as net:
        out = {h: workdir / f'sub_{h}.out' for h in ('b', 'c')}
        pub_out = workdir / 'pub.out'
        for host, path in out.items():
            _start(net, host, path, 'sub')
        _start(net, 'a', pub_out, 'pub', '--size', str(SIZE), '--wait-subs', '2')
        _wait_for(lambda: min(len(_lines(p, 'small')) for p in out.values()) >= 20, 30,
                  'steady delivery')
        t_cut = time.time()
        net.cut('b')
        assert not net.link_up('b') and net.link_up('c')
        time.sleep(cut_for)
        t_restore = time.time()
        net.restore('b')
        assert net.link_up('b')

        def resumed() -> bool:
            return all(any(t > t_restore for _, t in v) for v in _arrivals(out['b']).values())

        with contextlib.suppress(AssertionError):  # reported below
            _wait_for(resumed, 10, 'delivery after restore')
        time.sleep(1.0)
        published = _lines(pub_out, 'pub')
    recv, other = _arrivals(out['b']), _arrivals(out['c'])
    grace = 0.3  # samples already in b's socket buffer when the link went down

    def during_cut(v: list[tuple[int, float]]) -> int:
        return sum(t_cut + grace < t < t_restore for _, t in v)

    during = {k: during_cut(v) for k, v in recv.items()}
    during_c = {k: during_cut(v) for k, v in other.items()}
    before = {k: max((round(t - t_cut, 3) for _, t in v if t <= t_cut + grace), default=None)
              for k, v in recv.items()}
    recovery = {k: min((round(t - t_restore, 3) for _, t in v if t > t_restore), default=None)
                for k, v in recv.items()}
    sent_during = [int(x[1]) for x in published if t_cut < float(x[2]) < t_restore]
    lost = {k: len(set(sent_during) - {s for s, _ in v}) for k, v in recv.items()}
    print(f'\n[emulated hosts] cut b for {cut_for:.1f} s: arrivals at b during the cut {during} '
          f'(at c, still linked: {during_c}); last arrival at b {before} s after the cut began; '
          f'first after restore {recovery} s; {len(sent_during)} published during the cut, '
          f'never delivered to b {lost} (reliable KEEP_LAST 10: what is still in the writer '
          'history is repaired)')
    assert during == {'small': 0, 'big': 0}
    expected = 20.0 * (cut_for - grace)
    assert min(during_c.values()) >= 0.8 * expected, during_c
    for kind, seconds in recovery.items():
        assert seconds is not None and seconds < 5.0, (kind, recovery)


def _running(pid: int) -> bool:
    """Return whether ``pid`` exists and is not a zombie."""
    try:
        return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z'
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_cleanup_kills_processes_and_deletes_namespaces(workdir):
    # A stale namespace of a crashed instance (its tag's lock is not held) goes at the next start.
    stale = 'avh-fffffffx0-ghost'
    subprocess.run(['ip', 'netns', 'add', stale], check=True)
    try:
        with pytest.raises(RuntimeError, match='boom'), \
                EmulatedNetwork(['a', 'b'], workdir=workdir, domain_id=DOMAIN) as net:
            assert stale not in _netns()
            names = [net.switch_ns, *(net.netns(h) for h in net.hosts)]
            assert set(names) <= set(_netns())
            # A process that forks a child leaving its process group (setsid), like a launcher.
            proc = net.popen('a', ['sh', '-c', 'setsid sleep 300 & exec sleep 300'])
            _wait_for(lambda: len(subprocess.run(['ip', 'netns', 'pids', net.netns('a')],
                                                 capture_output=True, text=True)
                                  .stdout.split()) >= 2, 10, 'both processes')
            pids = [int(p) for p in subprocess.run(['ip', 'netns', 'pids', net.netns('a')],
                                                   capture_output=True, text=True).stdout.split()]
            raise RuntimeError('boom')  # the test fails inside the block: cleanup still runs
    finally:
        subprocess.run(['ip', 'netns', 'del', stale], capture_output=True)
    assert proc.poll() is not None
    time.sleep(0.2)  # the orphan's zombie is reaped by init
    assert not [p for p in pids if _running(p)]
    left = [n for n in _netns() if n in names or n.startswith(f'avh-{net.tag}-')]
    assert left == []
    assert not [n for n in _netns() if n.startswith('avh-') and n != stale and
                n.split('-')[1].startswith(f'{os.getpid():x}x')]


def test_available_gives_a_reason_when_not_root(monkeypatch):
    monkeypatch.setattr(os, 'geteuid', lambda: 1000)
    assert emulated_hosts._probe() == (
        False, 'emulated hosts need root (network and mount namespaces)')
