"""Policy.prepare: the traced inference graph acts as the eager networks do."""

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
def test_prepared_policy_acts_as_the_eager_networks(config):
    eager, prepared = _policy(**config), _policy(**config)
    assert prepared.prepare() is True
    assert prepared._graph is not None
    for image, vector in _observations(eager.spec):
        np.testing.assert_allclose(prepared.act(image, vector), eager.act(image, vector),
                                   rtol=0, atol=1e-6)


def test_a_graph_that_does_not_match_is_not_used(monkeypatch):
    policy = _policy()
    reference = policy.actor.forward

    def off(features, vector):     # the eager reference disagrees with what gets traced
        return reference(features, vector) + (0.0 if torch.jit.is_tracing() else 1e-3)
    monkeypatch.setattr(policy.actor, 'forward', off)
    assert policy.prepare() is False
    assert policy._graph is None


def test_prepare_keeps_the_input_checks_and_float_input_takes_the_eager_path():
    policy = _policy()
    policy.prepare()
    image, vector = next(_observations(policy.spec))
    with pytest.raises(ValueError, match='image must have shape'):
        policy.act(image[:2], vector)
    np.testing.assert_allclose(policy.act(image.astype(np.float32), vector),
                               policy.act(image, vector), rtol=0, atol=1e-6)


def test_spec_is_unchanged_by_prepare():
    policy = _policy()
    before = dataclasses.asdict(policy.spec)
    policy.prepare()
    assert dataclasses.asdict(policy.spec) == before
