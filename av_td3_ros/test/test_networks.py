"""Networks: NatureCNN equals SB3's, the legacy CNN equals DESIGN §7, actor and twin critic."""

from av_td3_ros.driving.observation import ObservationSpec
from av_td3_ros.learning.config import TD3Config
from av_td3_ros.learning.networks import (
    Actor, build_actor, build_cnn, build_critic, LegacyCNN, NatureCNN, prepare_image,
    TwinCritic)
import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.torch_layers import NatureCNN as SB3NatureCNN
import torch
from torch import nn
from torch.nn import functional as F

torch.set_num_threads(1)


def _images(n=3, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(
        0, 256, size=(n, 4, 84, 84), dtype=np.uint8))


def test_nature_cnn_equals_stable_baselines3_nature_cnn():
    torch.manual_seed(0)
    ours = NatureCNN(4, 512, 'zero_one')
    space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    theirs = SB3NatureCNN(space, features_dim=512)
    theirs.load_state_dict(ours.state_dict())  # same layer names and shapes
    images = _images()
    with torch.no_grad():
        expected = theirs(images.float() / 255.0)   # SB3 normalises images before the CNN
        np.testing.assert_allclose(ours(images).numpy(), expected.numpy(), atol=1e-5)
        ours.channels_last = True
        np.testing.assert_allclose(ours(images).numpy(), expected.numpy(), atol=1e-5)
        prepared = prepare_image(images, channels_last=True)
        assert prepared.dtype == torch.float32 and prepared.is_contiguous(
            memory_format=torch.channels_last)
        np.testing.assert_allclose(ours(prepared).numpy(), expected.numpy(), atol=1e-5)


def _legacy_reference(sd, image_u8):
    """DESIGN §7 legacy CNN written out op by op, input scaled to [-1, 1]."""
    x = image_u8.float() / 255.0 * 2.0 - 1.0
    for i, shape in ((1, [32, 20, 20]), (2, [64, 9, 9]), (3, [64, 7, 7])):
        stride = {1: 4, 2: 2, 3: 1}[i]
        x = F.conv2d(x, sd[f'conv{i}.weight'], sd[f'conv{i}.bias'], stride=stride)
        x = F.layer_norm(x, shape, sd[f'ln{i}.weight'], sd[f'ln{i}.bias'])
        x = F.leaky_relu(x, 0.01)
    x = F.linear(x.flatten(1), sd['fc.weight'], sd['fc.bias'])
    return F.leaky_relu(F.layer_norm(x, [512], sd['ln4.weight'], sd['ln4.bias']), 0.01)


def test_legacy_cnn_matches_the_design_layout():
    torch.manual_seed(1)
    cnn = LegacyCNN(4, 512, 'minus_one_one')
    sd = cnn.state_dict()
    assert [k.split('.')[0] for k in sd][::2] == [
        'conv1', 'ln1', 'conv2', 'ln2', 'conv3', 'ln3', 'fc', 'ln4']
    assert sd['ln1.weight'].shape == (32, 20, 20) and sd['fc.weight'].shape == (512, 3136)
    # non-trivial LayerNorm affine parameters, so a wrong order of ops shows
    with torch.no_grad():
        for key in sd:
            if key.startswith('ln'):
                sd[key].uniform_(0.5, 1.5)
    cnn.load_state_dict(sd)
    images = _images(seed=2)
    with torch.no_grad():
        np.testing.assert_allclose(cnn(images).numpy(), _legacy_reference(sd, images).numpy(),
                                   atol=2e-5)


def test_scaling_variants_differ_and_are_validated():
    torch.manual_seed(0)
    a = NatureCNN(4, 64, 'zero_one')
    b = NatureCNN(4, 64, 'minus_one_one')
    b.load_state_dict(a.state_dict())
    images = _images()
    with torch.no_grad():
        ref_b = F.relu(F.linear(
            nn.Sequential(*list(a.cnn.children())[1:])(
                F.conv2d(images.float() / 127.5 - 1.0, a.cnn[0].weight, a.cnn[0].bias,
                         stride=4)), a.linear[0].weight, a.linear[0].bias))
        np.testing.assert_allclose(b(images).numpy(), ref_b.numpy(), atol=1e-5)
        assert not torch.allclose(a(images), b(images))
    with pytest.raises(ValueError, match='image_scaling'):
        NatureCNN(4, 64, 'zero_to_one')


def test_actor_is_bounded_and_critic_has_two_heads_on_features_vector_action():
    torch.manual_seed(0)
    actor = Actor(512, 53, 2, (256, 256), max_action=0.5)
    critic = TwinCritic(512, 53, 2, (256, 256))
    features, vector = torch.randn(16, 512) * 50, torch.randn(16, 53)
    action = actor(features, vector)
    assert action.shape == (16, 2) and action.abs().max() <= 0.5
    q1, q2 = critic(features, vector, action)
    assert q1.shape == q2.shape == (16, 1) and not torch.equal(q1, q2)
    assert torch.equal(critic.q1(features, vector, action), q1)
    assert set(critic.state_dict()) == {f'Q{q}.fc{i}.{p}' for q in (1, 2) for i in (1, 2, 3)
                                        for p in ('weight', 'bias')}
    assert critic.state_dict()['Q1.fc1.weight'].shape == (256, 512 + 53 + 2)
    assert set(actor.state_dict()) == {f'fc{i}.{p}' for i in (1, 2, 3)
                                       for p in ('weight', 'bias')}


def test_builders_follow_the_config():
    legacy = TD3Config(cnn='legacy', hidden=(64,), obs=ObservationSpec(
        n_waypoints=10, image_scaling='minus_one_one'))
    assert isinstance(build_cnn(legacy), LegacyCNN)
    assert isinstance(build_cnn(TD3Config()), NatureCNN)
    assert build_actor(legacy).fc1.in_features == 512 + 23
    assert build_actor(legacy).fc2.out_features == 2
    assert build_critic(legacy).Q2.fc1.in_features == 512 + 23 + 2
    small = TD3Config(obs=ObservationSpec(image_size=64, frame_stack=3))
    cnn = build_cnn(small)
    assert cnn(torch.zeros(2, 3, 64, 64, dtype=torch.uint8)).shape == (2, 512)
