"""
A fleet on emulated hosts: one trainer machine, two actor machines with two actors each.

Each host is a network + mount namespace of its own (test/emulated_hosts.py: its own machine id
and /dev/shm, so DDS talks UDP between hosts and shared memory within one); each runs
``bringup`` as a user would, every node in its own process. Checked: every actor's transitions
reach the trainer (>= 95 %, counted per actor_id by the trainer), the trainer's weights reach
every actor, no actor hears another's camera or feedback, and after a 10 s link cut of one
actor host the trainer kept learning, the cut-off actors kept driving on their last weights and
their transitions flow again within 5 s of the link coming back, none repeated or reordered.
Needs root (skipped with the reason otherwise).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import threading
import time

from ament_index_python.packages import get_package_prefix
import emulated_hosts
from emulated_hosts import EmulatedNetwork
import pytest

pytestmark = pytest.mark.ros

OBSERVER = Path(__file__).resolve().with_name('fleet_observer.py')
BRINGUP = Path(get_package_prefix('av_td3_ros')) / 'lib' / 'av_td3_ros' / 'bringup'
ROLES = {'actors1': ['a1_car0', 'a1_car1'], 'actors2': ['a2_car0', 'a2_car1']}
CUT_S = 10.0
RECOVERY_S = 5.0
TRAINER_SET = {
    'mode': 'realtime', 'features_dim': 16, 'hidden': '[16, 16]', 'batch_size': 8,
    'learning_starts': 32, 'buffer_capacity': 20000, 'broadcast_every': 20,
    'stats_period': 0.2, 'checkpoint_every': 0, 'num_threads': 1}
# paced at 20 Hz like CARLA or a car (synchronous sims run flat out: 4 of them outran the
# trainer's intake on 2 cores, 39 % delivered, counted as missed by the trainer)
SIM_SET = {'camera_width': 84, 'camera_height': 84, 'max_episode_steps': 200,
           'mode': 'realtime'}
POLICY_SET = {'diagnostics_period': 0.2}


class Observer:
    """The newest JSON line of fleet_observer.py on the trainer host, read in a thread."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lock = threading.Lock()
        self.latest: dict = {}
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            if line.startswith('{'):
                with self.lock:
                    self.latest = json.loads(line)

    def snapshot(self) -> dict:
        with self.lock:
            return self.latest

    def per_role(self, roles: list[str]) -> dict[str, dict]:
        """Return {role: {'sent', 'received', 'out_of_order', 'version', 'frames', ...}}."""
        snap = self.snapshot()
        trainer = (snap.get('trainer') or {}).get('actors', {})
        out = {}
        for role in roles:
            actor_id = next((a for a in list(trainer) + list(snap.get('actors', {}))
                             if a.endswith(f'/{role}/av_td3_policy')), None)
            diag = snap.get('actors', {}).get(actor_id, {}) if actor_id else {}
            stats = trainer.get(actor_id, {}) if actor_id else {}
            out[role] = {
                'actor_id': actor_id,
                'sent': int(diag.get('transitions_published', 0)),
                'frames': int(diag.get('frames_answered', 0)),
                'diag_version': int(diag.get('policy_version', 0)),
                'message': diag.get('message', ''),
                'received': stats.get('transitions', 0),
                'out_of_order': stats.get('out_of_order', 0),
                'missed': stats.get('missed', 0),
                'version': stats.get('policy_version', 0)}
        return out


def _wait(predicate, timeout: float, what: str, describe=lambda: '') -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f'timed out after {timeout} s waiting for {what}: {describe()}')


def _bringup(net: EmulatedNetwork, host: str, log: Path, configuration: str,
             settings: dict[str, dict], *args: str) -> subprocess.Popen:
    argv = [str(BRINGUP), configuration, *args]
    for node, params in settings.items():
        argv += [f'--set={node}.{name}={value}' for name, value in params.items()]
    with open(log, 'w') as out:
        return net.popen(host, argv, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Return pytest's tmp_path; skip (with the reason) where namespaces are not usable."""
    emulated_hosts.require()
    return tmp_path


def test_two_actor_hosts_feed_one_trainer_and_recover_from_a_link_cut(workdir):
    roles = [r for host in ROLES for r in ROLES[host]]
    logs = {host: workdir / f'{host}.log' for host in ('trainer', *ROLES)}
    with EmulatedNetwork(['trainer', *ROLES], workdir,
                         domain_id=os.environ.get('ROS_DOMAIN_ID', '0')) as net:
        bringups = {'trainer': _bringup(net, 'trainer', logs['trainer'], 'trainer',
                                        {'av_td3_trainer': TRAINER_SET})}
        for host, host_roles in ROLES.items():
            bringups[host] = _bringup(net, host, logs[host], 'actors_sim',
                                      {'av_td3_sim': SIM_SET, 'av_td3_policy': POLICY_SET},
                                      f'--roles={",".join(host_roles)}')
        observer = Observer(net.popen('trainer', [sys.executable, str(OBSERVER), *roles],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      text=True))

        def logs_tail() -> str:
            return '\n'.join(f'--- {h}\n' + p.read_text()[-2000:] for h, p in logs.items())

        try:
            # every actor's transitions reach the trainer, made with its broadcast weights
            _wait(lambda: all(a['received'] > 0 and a['version'] >= 1
                              for a in observer.per_role(roles).values()), 240,
                  'transitions with broadcast weights from all 4 actors',
                  lambda: f'{observer.per_role(roles)}\n{logs_tail()}')
            graph = observer.snapshot()['graph']
            for role in roles:    # no actor hears another's camera or feedback
                assert graph[role] == {
                    'image_publishers': [f'/{role}/av_td3_sim'],
                    'image_subscribers': [f'/{role}/av_td3_policy'],
                    'feedback_publishers': [f'/{role}/av_td3_sim'],
                    'feedback_subscribers': [f'/{role}/av_td3_policy']}, (role, graph[role])
            # over a window of steady state (what an actor sent before the trainer's
            # subscription had matched it across the link is not counted)
            time.sleep(2.0)
            start = observer.per_role(roles)
            time.sleep(15.0)
            steady = observer.per_role(roles)
            sent = {r: steady[r]['sent'] - start[r]['sent'] for r in roles}
            received = {r: steady[r]['received'] - start[r]['received'] for r in roles}
            ratio = sum(received.values()) / sum(sent.values())
            print(f'\nbefore the cut, 15 s: {sum(received.values())} of {sum(sent.values())} '
                  f'transitions sent reached the trainer ({ratio:.1%}); per actor: '
                  + ', '.join(f'{r} {received[r]}/{sent[r]}' for r in roles))
            assert ratio >= 0.95, json.dumps({'start': start, 'end': steady}, indent=1)
            assert all(a['out_of_order'] == 0 for a in steady.values()), steady

            cut_roles, other_roles = ROLES['actors1'], ROLES['actors2']
            before = observer.per_role(roles)
            total_it_before = observer.snapshot()['trainer']['total_it']
            net.cut('actors1')
            time.sleep(1.0)       # what was in flight has landed
            frozen = observer.per_role(roles)
            time.sleep(CUT_S - 1.0)
            during = observer.per_role(roles)
            total_it_during = observer.snapshot()['trainer']['total_it']
            net.restore('actors1')
            assert all(during[r]['received'] == frozen[r]['received'] for r in cut_roles), \
                'transitions crossed a cut link'
            assert all(during[r]['received'] > before[r]['received'] for r in other_roles), \
                'the linked actors stopped feeding the trainer'
            assert total_it_during > total_it_before, 'the trainer stopped learning'
            # flowing again: 20 more transitions (1 s at 20 Hz) from each cut-off actor
            recovery = _wait(lambda: all(observer.per_role(roles)[r]['received'] >=
                                         frozen[r]['received'] + 20 for r in cut_roles),
                             RECOVERY_S,
                             'transitions from the cut-off actors after the link came back',
                             lambda: f'{observer.per_role(roles)}')
            time.sleep(3.0)
            # fresh diagnostics from the cut-off host: it cannot have sent fewer than arrived
            _wait(lambda: all(a['sent'] >= a['received']
                              for a in observer.per_role(cut_roles).values()), 30,
                  'diagnostics of the cut-off actors after the link came back',
                  lambda: f'{observer.per_role(roles)}')
            after = observer.per_role(roles)
            for role in cut_roles:      # they drove on their last weights while cut off
                assert after[role]['frames'] > before[role]['frames'] + 20, (before, after)
                assert after[role]['diag_version'] >= before[role]['diag_version'] >= 1
                assert after[role]['message'] == 'driving', after[role]
            assert all(a['out_of_order'] == 0 for a in after.values()), after
            lost = {r: (after[r]['sent'] - before[r]['sent']) -
                    (after[r]['received'] - before[r]['received']) for r in cut_roles}
            missed = {r: after[r]['missed'] - before[r]['missed'] for r in cut_roles}
            print(f'link cut {CUT_S:.0f} s: trainer updates {total_it_before} -> '
                  f'{total_it_during} during it; the cut-off host delivered 20 transitions per '
                  f'actor {recovery:.2f} s after restore; transitions sent but not received '
                  f'over the cut, per cut-off actor: {lost} (the trainer counted {missed} '
                  f'missing steps); received/sent in all: '
                  + ', '.join(f'{r} {a["received"]}/{a["sent"]}' for r, a in after.items()))
            assert 'dropped a transition' not in logs['trainer'].read_text()
        finally:
            for process in bringups.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)
            codes = {host: process.wait(timeout=60) for host, process in bringups.items()}
        assert codes == dict.fromkeys(bringups, 0), f'{codes}\n{logs_tail()}'
