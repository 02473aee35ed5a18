"""
``make demo``'s job end to end, shortened: bring-up, training, the save service, evaluation, files.

The real ``python -m av_td3_ros.apps.demo`` in a process of its own (its own ROS graph, in this
run's domain), with small networks so that a minute on 2 cores runs updates; learning itself is
the 10-minute demo's to show (README results), not this test's.
"""

import hashlib
import json
import os
from pathlib import Path
import subprocess
import sys

from av_td3_ros.formats.checkpoint import inspect_checkpoint
import pytest

SMALL = """\
/**/av_td3_trainer:
  ros__parameters:
    features_dim: 16
    hidden: [32, 32]
    batch_size: 16
    samples_per_insert: 8.0
    spi_error_buffer: 160.0
    learning_starts: 200
    broadcast_every: 10
    checkpoint_every: 0
"""
REQUIRED = ('train_env_steps', 'train_updates', 'wall_s', 'checkpoint_path')
PER_POLICY = ('mean_return', 'mean_distance_m', 'mean_abs_lateral_m', 'success_rate')


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
    results = tmp_path_factory.mktemp('demo')
    small = results / 'small.yaml'
    small.write_text(SMALL)
    run = subprocess.run(
        [sys.executable, '-m', 'av_td3_ros.apps.demo', '--minutes', '1.3', '--eval-episodes', '1',
         '--demonstrations', '300', '--results', str(results), '--params-file', str(small)],
        env=dict(os.environ), capture_output=True, text=True, timeout=300)
    return run, results


def test_demo_writes_the_report_the_design_asks_for(demo_run):
    run, results = demo_run
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((results / 'demo.json').read_text())
    for key in REQUIRED:
        assert key in report, key
    for who in ('policy', 'random'):
        for key in PER_POLICY:
            assert isinstance(report[who][key], float), (who, key)
    assert report['train_updates'] > 0 and report['train_env_steps'] > 0
    assert report['demonstration_transitions'] == 300
    assert report['bc_alpha'] == 2.5          # config/demo.yaml's, not overridden here
    assert (results / 'training_curve.png').stat().st_size > 10_000
    assert 'through ~/save_checkpoint' in run.stdout


def test_the_checkpoint_is_the_one_the_save_service_reported(demo_run):
    run, results = demo_run
    assert run.returncode == 0
    report = json.loads((results / 'demo.json').read_text())
    path = Path(report['checkpoint_path'])
    assert path.parent == results / 'checkpoints'
    assert hashlib.sha256(path.read_bytes()).hexdigest() == report['checkpoint_sha256']
    info = inspect_checkpoint(path)
    assert info['total_it'] == report['train_updates']
