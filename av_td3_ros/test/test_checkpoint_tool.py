"""checkpoint_tool, run as the package's installed executable: inspect, export, convert."""

import json
import os
from pathlib import Path
import subprocess

from ament_index_python.packages import get_package_prefix
from av_td3_ros.apps.checkpoint_tool import main
from av_td3_ros.driving.policy import Policy
from av_td3_ros.formats.checkpoint import (
    CheckpointError, convert_legacy, inspect_checkpoint, load_checkpoint, read_checkpoint,
    save_checkpoint)
from av_td3_ros.learning.config import TD3Config
from av_td3_ros.learning.td3 import TD3
from legacy_checkpoint import write_legacy_checkpoint
import numpy as np
import pytest
import torch

TOOL = Path(get_package_prefix('av_td3_ros')) / 'lib' / 'av_td3_ros' / 'checkpoint_tool'
CFG = TD3Config(features_dim=64, hidden=(32, 32), batch_size=4)


def _run(*args):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([str(TOOL), *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.fixture(scope='module')
def v1_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('tool') / 'td3_step_0.pth'
    td3 = TD3(CFG)
    td3.total_it = 77
    save_checkpoint(path, td3, counters={'env_steps': 5})
    return path, td3


def test_inspect_prints_the_summary_as_json(v1_file):
    path, _ = v1_file
    result = _run('inspect', path)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info['format'] == 'v1' and info['version'] == 1 and info['total_it'] == 77
    assert info['architecture']['cnn'] == 'nature'
    assert info['architecture']['hidden'] == [32, 32]
    assert info['observation_spec']['n_waypoints'] == 25
    assert info['observation_spec']['image_scaling'] == 'zero_one'
    assert info['sha256'] == read_checkpoint(path).sha256


def test_export_writes_a_policy_that_acts_like_the_checkpoint(v1_file, tmp_path):
    path, td3 = v1_file
    out = tmp_path / 'policy.safetensors'
    result = _run('export', path, out)
    assert result.returncode == 0, result.stderr
    policy = Policy.load(out)
    assert policy.version == 77
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (4, 84, 84), dtype=np.uint8)
    vector = rng.standard_normal(53).astype(np.float32)
    np.testing.assert_array_equal(policy.act(image, vector), td3.act(image, vector))
    info = inspect_checkpoint(out)
    assert info['format'] == 'policy' and info['total_it'] == 77


def test_convert_turns_a_legacy_file_into_a_v1_checkpoint(tmp_path):
    legacy = tmp_path / 'legacy.pth'
    reference = write_legacy_checkpoint(legacy, state_dim=535, total_it=900)
    out = tmp_path / 'converted.pth'
    result = _run('convert', legacy, out)
    assert result.returncode == 0, result.stderr
    raw = torch.load(out, weights_only=True)
    assert raw['format'] == 'av_td3_ros.checkpoint' and raw['learner']['total_it'] == 900
    info = inspect_checkpoint(out)
    assert info['format'] == 'v1' and info['architecture']['cnn'] == 'legacy'
    assert info['observation_spec']['n_waypoints'] == 10
    assert info['observation_spec']['image_scaling'] == 'minus_one_one'
    learner = TD3(read_checkpoint(out).config)
    load_checkpoint(out, learner)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (4, 84, 84), dtype=np.uint8)
    vector = rng.standard_normal(23).astype(np.float32)
    np.testing.assert_allclose(learner.act(image, vector), reference(image, vector), atol=1e-5)
    # converting something that is not legacy is refused (exit status: next test)
    with pytest.raises(CheckpointError, match='not a legacy checkpoint'):
        convert_legacy(out, tmp_path / 'x.pth')


def test_refused_files_exit_1_with_one_error_line(tmp_path, capsys):
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'\x80\x04not really a pickle')
    result = _run('export', junk, tmp_path / 'o.safetensors')
    assert result.returncode == 1 and result.stdout == ''
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'junk.pth' in lines[0]
    assert not (tmp_path / 'o.safetensors').exists()
    # the same entry point in-process: a missing file, and usage errors
    assert main(['inspect', str(tmp_path / 'missing.pth')]) == 1
    assert 'no such file' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['frobnicate'])
