"""Policy.prepare: a warm-up that changes no action and keeps no memory per load."""

import dataclasses

from av_td3_ros.driving.observation import ObservationSpec
from av_td3_ros.driving.policy import Policy
from av_td3_ros.formats.policy_export import export_td3_policy
from av_td3_ros.learning.config import TD3Config
from av_td3_ros.learning.td3 import TD3
import numpy as np
import pytest
import torch


def _policy(**config) -> Policy:
    torch.manual_seed(0)
    return Policy.from_export_bytes(export_td3_policy(TD3(TD3Config(**config))))


def _observations(spec: ObservationSpec, n: int = 8):
    rng = np.random.default_rng(1)
    for _ in range(n):
        yield (rng.integers(0, 256, spec.image_shape, dtype=np.uint8),
               rng.standard_normal(spec.vector_dim).astype(np.float32))


@pytest.mark.parametrize('config', [
    {},
    {'cnn': 'legacy', 'obs': ObservationSpec(image_scaling='minus_one_one')},
    {'obs': ObservationSpec(frame_stack=3, image_size=64, n_waypoints=10)},
], ids=['nature', 'legacy', 'small'])
def test_prepared_policy_acts_as_before(config):
    plain, prepared = _policy(**config), _policy(**config)
    prepared.prepare()
    for image, vector in _observations(plain.spec):
        np.testing.assert_array_equal(prepared.act(image, vector), plain.act(image, vector))


def test_prepare_keeps_the_input_checks_and_the_spec():
    policy = _policy()
    before = dataclasses.asdict(policy.spec)
    policy.prepare()
    image, vector = next(_observations(policy.spec))
    with pytest.raises(ValueError, match='image must have shape'):
        policy.act(image[:2], vector)
    assert dataclasses.asdict(policy.spec) == before


def test_loading_and_preparing_many_policies_keeps_no_memory():
    """
    Build and prepare 20 policies as a training actor does from broadcasts: nothing piles up.

    A traced graph per load kept ~5 MB each (97 MB for 20, measured) before it was removed.
    """
    data = export_td3_policy(TD3(TD3Config(features_dim=64)))

    def rss_mb() -> float:
        with open('/proc/self/statm') as statm:
            return int(statm.read().split()[1]) * 4096 / 2 ** 20
    Policy.from_export_bytes(data).prepare()      # first-use allocations are not growth
    start = rss_mb()
    for _ in range(20):
        Policy.from_export_bytes(data).prepare()
    assert rss_mb() - start < 40.0
