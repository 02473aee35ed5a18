"""
Emulate several machines on this one with Linux network namespaces (a test helper, root only).

Not a test module (no ``test_`` prefix). Each emulated host gets

- a network namespace of its own with ``lo`` up and one veth link ``eth0``, addressed in a
  private /24 (default 10.201.0.0/24, host *i* at .(i+1)) and a multicast route
  224.0.0.0/4 on ``eth0`` (Fast DDS SPDP discovery is multicast);
- a machine id of its own: every process started on the host sees a per-host file with a random
  32-hex id bind-mounted over ``/etc/machine-id`` (Fast DDS derives its host id from it;
  participants with one host id count as one machine, whose peers it reaches over SHM);
- a ``/dev/shm`` of its own: the directory ``workdir/<host>/shm`` bind-mounted over ``/dev/shm``
  for every process started on that host, so the processes of one host share memory with each
  other (Fast DDS SHM) and processes of different hosts cannot.

The hosts' veths are joined by a Linux bridge that lives in a separate "switch" namespace, so
nothing is ever created in (or changed about) the root namespace's interfaces and routes: the
veth ends are created directly in their namespaces (``v<i>`` in the switch, ``eth0`` in host
*i*), so link names cannot collide with other runs; only the namespace names need to be unique.
``cut(host)`` sets the host's switch-side veth down (the host sees NO-CARRIER, its address and
routes stay), ``restore(host)`` sets it up again.

Usage::

    with EmulatedNetwork(['trainer', 'actors1'], workdir=tmp_path, domain_id=71) as net:
        proc = net.popen('trainer', [sys.executable, '-m', 'some.module'],
                         stdout=out_file, stderr=subprocess.STDOUT)
        net.cut('actors1')
        net.restore('actors1')
        net.address('trainer')   # '10.201.0.1'

What a caller passes to ``popen``: the host name, an argv list, and optionally an ``env`` (default
``os.environ``) that must hold ``ROS_DOMAIN_ID`` unless the network was made with ``domain_id``.
``popen`` always layers the emulated hosts' DDS settings over it (``net.env(base=env)``): it sets
``ROS_DOMAIN_ID`` (the network's ``domain_id`` when given, else the env's; an error when
neither), ``ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET`` (the suite's ``LOCALHOST`` would keep
discovery off ``eth0``), ``FASTDDS_DEFAULT_PROFILES_FILE=<package>/config/fastdds.xml``
(SHM 32 MB + UDPv4) and ``PYTHONUNBUFFERED=1``, and removes ``FASTDDS_BUILTIN_TRANSPORTS``
(``scripts/run_tests.sh`` sets it; not combined with the profile's transports here),
``ROS_STATIC_PEERS`` and ``ROS_LOCALHOST_ONLY``. The domain id cannot clash with other runs on
the machine: the namespaces see no other traffic. Other keyword arguments go to
``subprocess.Popen`` (``stdout``, ``stderr``, ``cwd``...); ``start_new_session`` is always set,
so every process is the leader of a process group of its own. ``run`` (short commands such as
``cat /etc/machine-id``) passes ``env`` unchanged. To start something with other DDS settings,
run ``net.command(host, argv)`` with ``subprocess`` yourself; ``close()`` then does not signal
its process group, but still SIGKILLs it with everything else left inside the namespaces.

Processes started by ``popen`` keep the host's namespaces for their children too (a launcher
forking node processes). ``close()`` (the context manager's exit, with an ``atexit`` fallback)
kills every process group started, then any process still inside the host namespaces, and deletes
the namespaces. Names are ``avh-<pid hex>x<counter>-<host>`` (and ``-sw`` for the switch), so two
runs on one machine never collide; each instance holds an ``flock`` on
``/run/av_td3_emulated_hosts/<tag>.lock`` for its lifetime, and namespaces of a tag whose lock is
free (a crashed run) are removed when the next instance starts.

``available()`` returns ``(ok, reason)`` after actually trying a namespace, a bridge, a veth and
the bind mounts; ``require()`` skips the calling pytest test with that reason.
"""

from __future__ import annotations

import atexit
from collections.abc import Sequence
import contextlib
import fcntl
import ipaddress
import itertools
import json
import os
from pathlib import Path
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parents[1]
FASTDDS_PROFILE = PACKAGE_DIR / 'config' / 'fastdds.xml'
PREFIX = 'avh-'
LOCK_DIR = Path('/run/av_td3_emulated_hosts')
HOST_IF = 'eth0'
_NAME_RE = re.compile(r'^avh-([0-9a-f]+x[0-9]+)-')
_HOST_RE = re.compile(r'^[a-z][a-z0-9_]{0,15}$')
_counter = itertools.count()
_available: tuple[bool, str] | None = None

# Runs in the host's network namespace (``ip netns exec`` already gave it a mount namespace of
# its own whose mounts are slaves of the root's); ``unshare --mount --propagation private``
# makes sure nothing mounted here propagates anywhere. $1 machine-id file, $2 shm directory.
_ENTER = ('mount --bind "$1" /etc/machine-id && mount --bind "$2" /dev/shm && shift 2 && '
          'exec "$@"')


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``ip ARGS`` and return the result (raise with its stderr when check and it fails)."""
    result = subprocess.run(['ip', *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f'ip {" ".join(args)}: {result.stderr.strip()}')
    return result


def _netns_list() -> list[str]:
    result = _ip('netns', 'list', check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def _kill_netns_processes(ns: str) -> None:
    """SIGKILL every process left in namespace ``ns`` (only namespaces of this harness)."""
    result = _ip('netns', 'pids', ns, check=False)
    for pid in result.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _delete_netns(ns: str) -> None:
    _kill_netns_processes(ns)
    _ip('netns', 'del', ns, check=False)


def _lock_path(tag: str) -> Path:
    return LOCK_DIR / f'{tag}.lock'


def sweep_stale() -> list[str]:
    """
    Delete the namespaces of harness instances that died without cleaning up.

    A namespace named ``avh-<tag>-...`` is stale when no live process holds the tag's lock.
    Return the names deleted.
    """
    deleted = []
    by_tag: dict[str, list[str]] = {}
    for ns in _netns_list():
        match = _NAME_RE.match(ns)
        if match:
            by_tag.setdefault(match.group(1), []).append(ns)
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    for tag, names in by_tag.items():
        with open(_lock_path(tag), 'a') as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live instance owns these
            for ns in names:
                _delete_netns(ns)
                deleted.append(ns)
            _lock_path(tag).unlink(missing_ok=True)
    return deleted


class EmulatedNetwork:
    """Hosts in network + mount namespaces of their own, joined by a bridge in a switch ns."""

    def __init__(self, hosts: Sequence[str], workdir: str | os.PathLike,
                 domain_id: int | str | None = None, subnet: str = '10.201.0.0/24') -> None:
        hosts = list(hosts)
        if not hosts or len(set(hosts)) != len(hosts):
            raise ValueError(f'hosts must be distinct and non-empty: {hosts}')
        for host in hosts:
            if not _HOST_RE.match(host):
                raise ValueError(f'host name {host!r}: lower-case letters, digits, _; '
                                 'max 16 characters')
        network = ipaddress.ip_network(subnet)
        if len(hosts) > network.num_addresses - 2:
            raise ValueError(f'{len(hosts)} hosts do not fit in {subnet}')
        self.hosts = hosts
        self.workdir = Path(workdir).resolve()
        self.domain_id = None if domain_id is None else str(domain_id)
        self.tag = f'{os.getpid():x}x{next(_counter)}'
        self.switch_ns = f'{PREFIX}{self.tag}-sw'
        self._prefixlen = network.prefixlen
        self._addresses = {h: str(network.network_address + i + 1) for i, h in enumerate(hosts)}
        self._ports = {h: f'v{i}' for i, h in enumerate(hosts)}  # switch side, inside switch ns
        self._procs: list[subprocess.Popen] = []
        self._created: list[str] = []
        self._lock: Any = None
        self._closed = False
        atexit.register(self.close)
        try:
            self._lock_and_sweep()
            self._build()
        except BaseException:
            self.close()
            raise

    # -- set-up --------------------------------------------------------------------------

    def _lock_and_sweep(self) -> None:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        self._lock = open(_lock_path(self.tag), 'a')  # noqa: SIM115 (held for the lifetime)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        # Our tag is new in this process; namespaces already carrying it are a dead process's
        # (same pid) leftovers. Then those of other dead instances.
        for ns in _netns_list():
            if ns.startswith(f'{PREFIX}{self.tag}-'):
                _delete_netns(ns)
        sweep_stale()

    def _create_netns(self, ns: str) -> None:
        _ip('netns', 'add', ns)
        self._created.append(ns)
        _ip('-n', ns, 'link', 'set', 'lo', 'up')

    def _build(self) -> None:
        sw = self.switch_ns
        self._create_netns(sw)
        _ip('-n', sw, 'link', 'add', 'br0', 'type', 'bridge', 'mcast_snooping', '0')
        _ip('-n', sw, 'link', 'set', 'br0', 'up')
        for host in self.hosts:
            ns = self.netns(host)
            self._create_netns(ns)
            port = self._ports[host]
            # Both ends are created directly in their namespaces: never in the root namespace.
            _ip('-n', sw, 'link', 'add', port, 'type', 'veth', 'peer', 'name', HOST_IF,
                'netns', ns)
            _ip('-n', sw, 'link', 'set', port, 'master', 'br0', 'up')
            _ip('-n', ns, 'addr', 'add', f'{self._addresses[host]}/{self._prefixlen}',
                'dev', HOST_IF)
            _ip('-n', ns, 'link', 'set', HOST_IF, 'up')
            _ip('-n', ns, 'route', 'add', '224.0.0.0/4', 'dev', HOST_IF)
            hostdir = self.workdir / host
            (hostdir / 'shm').mkdir(parents=True, exist_ok=True)
            os.chmod(hostdir / 'shm', 0o1777)
            (hostdir / 'machine-id').write_text(secrets.token_hex(16) + '\n')

    # -- queries -------------------------------------------------------------------------

    def netns(self, host: str) -> str:
        """Return the network namespace name of ``host``."""
        self._check_host(host)
        return f'{PREFIX}{self.tag}-{host}'

    def address(self, host: str) -> str:
        """Return the IPv4 address of ``host`` on its ``eth0``."""
        self._check_host(host)
        return self._addresses[host]

    def shm_dir(self, host: str) -> Path:
        """Return the directory the processes of ``host`` see as ``/dev/shm``."""
        self._check_host(host)
        return self.workdir / host / 'shm'

    def machine_id(self, host: str) -> str:
        """Return the machine id the processes of ``host`` read from ``/etc/machine-id``."""
        self._check_host(host)
        return (self.workdir / host / 'machine-id').read_text().strip()

    def link_stats(self, host: str, ifname: str = HOST_IF) -> dict[str, int]:
        """Return ``rx_bytes``, ``tx_bytes``, ``rx_packets``, ``tx_packets`` of a host's link."""
        out = _ip('-n', self.netns(host), '-s', '-j', 'link', 'show', ifname).stdout
        stats = json.loads(out)[0]['stats64']
        return {f'{d}_{k}': stats[d][k] for d in ('rx', 'tx') for k in ('bytes', 'packets')}

    def link_up(self, host: str) -> bool:
        """Return whether the switch-side link of ``host`` is administratively up."""
        out = _ip('-n', self.switch_ns, '-j', 'link', 'show', self._port(host)).stdout
        return 'UP' in json.loads(out)[0]['flags']

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Return ``base`` (default os.environ) with the emulated hosts' DDS settings."""
        env = dict(os.environ if base is None else base)
        if self.domain_id is not None:
            env['ROS_DOMAIN_ID'] = self.domain_id
        if not env.get('ROS_DOMAIN_ID'):
            raise ValueError('ROS_DOMAIN_ID: give EmulatedNetwork(domain_id=...) or put it in env')
        for name in ('FASTDDS_BUILTIN_TRANSPORTS', 'ROS_STATIC_PEERS', 'ROS_LOCALHOST_ONLY'):
            env.pop(name, None)
        env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'SUBNET'
        env['FASTDDS_DEFAULT_PROFILES_FILE'] = str(FASTDDS_PROFILE)
        env['PYTHONUNBUFFERED'] = '1'
        return env

    # -- actions -------------------------------------------------------------------------

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """Return the argv that runs ``argv`` on ``host`` (its netns, machine id and /dev/shm)."""
        self._check_open()
        hostdir = self.workdir / host
        return ['ip', 'netns', 'exec', self.netns(host),
                'unshare', '--mount', '--propagation', 'private',
                'sh', '-c', _ENTER, 'sh', str(hostdir / 'machine-id'), str(hostdir / 'shm'),
                *[str(a) for a in argv]]

    def popen(self, host: str, argv: Sequence[str], env: dict[str, str] | None = None,
              **kwargs: Any) -> subprocess.Popen:
        """
        Start ``argv`` on ``host`` in a process group of its own and return its Popen.

        The environment is ``self.env(base=env)``. ``ip netns exec``, ``unshare`` and ``sh`` all
        exec, so the Popen's pid is the process of ``argv`` itself; ``close()`` kills its group.
        """
        kwargs['start_new_session'] = True
        proc = subprocess.Popen(self.command(host, argv), env=self.env(base=env), **kwargs)
        self._procs.append(proc)
        return proc

    def run(self, host: str, argv: Sequence[str], timeout: float = 30.0,
            **kwargs: Any) -> subprocess.CompletedProcess:
        """Run ``argv`` on ``host`` to completion; return its result (text output captured)."""
        kwargs.setdefault('capture_output', True)
        kwargs.setdefault('text', True)
        return subprocess.run(self.command(host, argv), timeout=timeout, check=True, **kwargs)

    def cut(self, host: str) -> None:
        """Set the switch-side veth of ``host`` down: nothing reaches it or leaves it."""
        self._check_open()
        _ip('-n', self.switch_ns, 'link', 'set', self._port(host), 'down')

    def restore(self, host: str) -> None:
        """Set the switch-side veth of ``host`` up again."""
        self._check_open()
        _ip('-n', self.switch_ns, 'link', 'set', self._port(host), 'up')

    # -- tear-down -----------------------------------------------------------------------

    def kill_all(self, timeout: float = 3.0) -> None:
        """
        SIGTERM the process group of every process started, SIGKILL it after ``timeout``.

        Groups whose leader was reaped before (its pid may be in use again) are skipped; what
        is left of them inside the namespaces is killed by ``close()``.
        """
        live = [p for p in self._procs if p.returncode is None]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in live:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)  # start_new_session: pgid == pid
            deadline = time.monotonic() + timeout
            for proc in live:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(max(0.0, deadline - time.monotonic()))
            if all(p.poll() is not None for p in live):
                break

    def close(self) -> None:
        """Kill every process started, delete the namespaces and release the lock (idempotent)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            self.kill_all()
        finally:
            # Processes that left their group (setsid) but not their network namespace.
            for ns in reversed(self._created):
                _delete_netns(ns)
            self._created.clear()
            if self._lock is not None:
                _lock_path(self.tag).unlink(missing_ok=True)
                self._lock.close()
                self._lock = None

    def __enter__(self) -> EmulatedNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers -------------------------------------------------------------------------

    def _check_host(self, host: str) -> None:
        if host not in self._addresses:
            raise KeyError(f'unknown host {host!r}; hosts: {self.hosts}')

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError('EmulatedNetwork is closed')

    def _port(self, host: str) -> str:
        self._check_host(host)
        return self._ports[host]


def _probe() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, 'emulated hosts need root (network and mount namespaces)'
    for tool in ('ip', 'unshare', 'mount', 'sh'):
        if shutil.which(tool) is None:
            return False, f'emulated hosts need `{tool}` (ip: Debian package iproute2)'
    try:
        with tempfile.TemporaryDirectory(prefix='avh-probe-') as tmp, \
                EmulatedNetwork(['probe'], workdir=tmp) as net:
            out = net.run('probe', ['cat', '/etc/machine-id']).stdout
            if out.strip() != net.machine_id('probe'):
                return False, 'bind-mounting /etc/machine-id in a mount namespace did not work'
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        return False, f'network/mount namespaces not usable here: {e}'
    return True, ''


def available() -> tuple[bool, str]:
    """Return ``(True, '')`` when emulated hosts work here, else ``(False, reason)`` (cached)."""
    global _available
    if _available is None:
        _available = _probe()
    return _available


def require() -> None:
    """Skip the calling pytest test, with the reason, when emulated hosts are not available."""
    import pytest

    ok, reason = available()
    if not ok:
        pytest.skip(reason)
