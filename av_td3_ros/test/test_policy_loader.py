"""The policy node's loader without ROS: worker thread, path policy, staging, generations."""

import hashlib
import threading

from av_td3_ros.driving.policy_loader import build_policy, PolicyLoader
from av_td3_ros.formats.checkpoint import CheckpointError
from av_td3_ros.formats.policy_export import export_td3_policy
from av_td3_ros.learning.config import TD3Config
from av_td3_ros.learning.td3 import TD3
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp('loader')
    (root / 'ckpt').mkdir()
    (root / 'other').mkdir()
    torch.manual_seed(3)
    td3 = TD3(TD3Config())
    td3.total_it = 42
    data = export_td3_policy(td3)
    (root / 'ckpt' / 'p.safetensors').write_bytes(data)
    (root / 'other' / 'p.safetensors').write_bytes(data)
    return root, data


@pytest.fixture
def loader():
    loader = PolicyLoader()
    yield loader
    loader.shutdown()


def test_reads_on_its_worker_thread_and_stages_for_one_swap(loader, files):
    root, data = files
    generation = loader.begin(str(root / 'ckpt'), [], 'cpu')
    thread = loader.submit(lambda: threading.current_thread().name).result(10)
    assert thread.startswith('policy_loader')
    staged = loader.submit(loader.read_checkpoint, 'p.safetensors', generation).result(60)
    assert staged.total_it == 42 and staged.sha256 == hashlib.sha256(data).hexdigest()
    assert staged.source == str(root / 'ckpt' / 'p.safetensors')
    assert loader.take() is None                   # nothing until staged
    assert loader.stage(staged, generation)
    assert loader.take() is staged and loader.take() is None


def test_the_path_policy_refuses_what_lies_outside(loader, files):
    root, _ = files
    generation = loader.begin(str(root / 'ckpt'), [], 'cpu')
    with pytest.raises(CheckpointError):
        loader.read_checkpoint(str(root / 'other' / 'p.safetensors'), generation)
    with pytest.raises(CheckpointError, match='no checkpoint'):
        loader.read_checkpoint('', generation)        # no .pth there
    allowed = loader.begin(str(root / 'ckpt'), [str(root / 'other')], 'cpu')
    assert loader.read_checkpoint(str(root / 'other' / 'p.safetensors'), allowed).total_it == 42
    assert loader.initial_path(allowed, 'p.safetensors') == str(root / 'ckpt' / 'p.safetensors')
    assert loader.initial_path(allowed, '/abs/x.pth') == '/abs/x.pth'


def test_a_load_of_a_past_generation_is_not_staged(loader, files):
    root, _ = files
    first = loader.begin(str(root / 'ckpt'), [], 'cpu')
    staged = build_policy(root / 'ckpt' / 'p.safetensors', 'cpu')
    loader.close()                                  # cleaned up while the load ran
    assert not loader.stage(staged, first) and loader.take() is None
    second = loader.begin(str(root / 'ckpt'), [], 'cpu')
    assert not loader.stage(staged, first)          # reconfigured: still the past
    assert loader.stage(staged, second) and loader.take() is staged


def test_broadcast_weights_are_reviewed_then_built(loader, files):
    root, data = files
    generation = loader.begin(str(root / 'ckpt'), [], 'cpu')
    digest = hashlib.sha256(data).hexdigest()
    why, staged = loader.review_weights('safetensors', data, digest, 7, 42, '/w', generation)
    assert staged is not None and staged.version == 7 and staged.source == f'/w ({why})'
    assert loader.stage(staged, generation, weights=(7, digest))
    assert loader.weights_in_use == (7, digest)
    why, again = loader.review_weights('safetensors', data, digest, 7, 42, '/w', generation)
    assert again is None and 'already in use' in why
    why, bad = loader.review_weights('safetensors', data[:-1], digest, 8, 42, '/w', generation)
    assert bad is None and 'sha256 mismatch' in why
    loader.begin(str(root / 'ckpt'), [], 'cpu')      # a new configuration forgets them
    assert loader.weights_in_use is None


def test_requests_and_weights_end_to_end_on_the_worker(loader, files):
    root, data = files
    generation = loader.begin(str(root / 'ckpt'), [], 'cpu')
    ok, message, staged = loader.submit(loader.serve_request, 'p.safetensors',
                                        generation).result(60)
    assert ok and 'in use from the next camera frame' in message and loader.take() is staged
    ok, message, _ = loader.serve_request('missing.pth', generation)
    assert not ok and message.startswith('refused:')
    digest = hashlib.sha256(data).hexdigest()
    assert loader.take_weights('json', data, digest, 1, 0, '/w', generation)[0] == 'refused'
    assert loader.take_weights('safetensors', data, digest, 1, 0, '/w', generation)[0] == \
        'staged'
    assert loader.take_weights('safetensors', data, digest, 1, 0, '/w', generation)[0] == \
        'in use'
    loader.close()
    assert loader.take_weights('safetensors', data, digest, 2, 0, '/w', generation)[0] == \
        'stale'
    ok, message, _ = loader.serve_request('p.safetensors', generation)
    assert not ok and 'cleaned up or reconfigured' in message and loader.take() is None
