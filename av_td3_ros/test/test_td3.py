"""TD3 learner: gradient routing between the two CNNs, targets, noise, clipping, TD3+BC."""

from av_td3_ros.driving.observation import ObservationSpec
from av_td3_ros.learning.config import TD3Config
from av_td3_ros.learning.replay import Batch, ReplayBuffer
from av_td3_ros.learning.td3 import native_bf16, resolve_bf16, TD3
import numpy as np
import pytest
import torch

torch.set_num_threads(1)
B = 8


def _config(**kw):
    return TD3Config(batch_size=B, learning_starts=0, buffer_capacity=64, **kw)


def _batch(seed=0, spec=None):
    spec = spec or ObservationSpec()
    rng = np.random.default_rng(seed)
    frames = torch.from_numpy(rng.integers(0, 256, (B, spec.frame_stack + 1, 84, 84),
                                           dtype=np.uint8))
    dim = spec.vector_dim

    def normal(*shape):
        return torch.from_numpy(rng.standard_normal(shape).astype(np.float32))

    return Batch(image=frames[:, :-1], vector=normal(B, dim),
                 action=torch.from_numpy(rng.uniform(-1, 1, (B, 2)).astype(np.float32)),
                 reward=normal(B, 1), next_image=frames[:, 1:], next_vector=normal(B, dim),
                 not_done=torch.from_numpy(rng.integers(0, 2, (B, 1)).astype(np.float32)))


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_actor_update_trains_actor_cnn_and_leaves_critic_cnn_alone():
    td3 = TD3(_config())
    batch = _batch()
    actor_cnn, critic_cnn, critic = (_snapshot(td3.actor_cnn), _snapshot(td3.critic_cnn),
                                     _snapshot(td3.critic))
    td3.update_actor(batch)
    assert _changed(actor_cnn, td3.actor_cnn)
    assert not _changed(critic_cnn, td3.critic_cnn)
    assert not _changed(critic, td3.critic)
    # not even a gradient reached the critic side
    assert all(p.grad is None for p in td3.critic_params)


def test_critic_update_trains_critic_cnn_and_leaves_actor_cnn_alone():
    td3 = TD3(_config())
    batch = _batch()
    actor_cnn, actor, critic_cnn = (_snapshot(td3.actor_cnn), _snapshot(td3.actor),
                                    _snapshot(td3.critic_cnn))
    targets = {n: _snapshot(getattr(td3, n)) for n in ('actor_cnn_target', 'critic_cnn_target')}
    td3.update_critic(batch)
    assert _changed(critic_cnn, td3.critic_cnn)
    assert not _changed(actor_cnn, td3.actor_cnn) and not _changed(actor, td3.actor)
    assert all(p.grad is None for p in td3.actor_params)
    assert not any(_changed(s, getattr(td3, n)) for n, s in targets.items())


def test_policy_delay_and_polyak_targets():
    td3 = TD3(_config(tau=0.25))
    batch = _batch()
    target_before = _snapshot(td3.critic_cnn_target)
    actor_before = _snapshot(td3.actor)
    td3.update(batch)          # total_it 1: critic only
    assert td3.total_it == 1
    assert not _changed(actor_before, td3.actor)
    assert not _changed(target_before, td3.critic_cnn_target)
    td3.update(batch)          # total_it 2: critic, actor, targets
    assert _changed(actor_before, td3.actor)
    online = td3.critic_cnn.state_dict()
    for key, value in td3.critic_cnn_target.state_dict().items():
        torch.testing.assert_close(value, 0.75 * target_before[key] + 0.25 * online[key])
    # all four targets moved
    for name in ('actor_cnn', 'actor', 'critic_cnn', 'critic'):
        assert not torch.equal(next(getattr(td3, f'{name}_target').parameters()),
                               next(getattr(td3, name).parameters()))


def test_gradient_clipping_bounds_each_optimizers_global_norm():
    td3 = TD3(_config(grad_clip_norm=1e-3))
    batch = _batch()
    td3.update_critic(batch)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in td3.critic_params]))
    assert norm <= 1e-3 * 1.01
    unclipped = TD3(_config(grad_clip_norm=None))
    unclipped.update_critic(batch)
    big = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in unclipped.critic_params]))
    assert big > 1e-2


def test_target_noise_is_clipped_and_seeded():
    # with actor_target returning 0 (zeroed last layer), next_action = clipped noise
    td3 = TD3(_config(target_noise=5.0, noise_clip=0.3))
    for p in td3.actor_target.fc3.parameters():
        p.data.zero_()
    seen = []
    original = td3.critic_target.forward
    td3.critic_target.forward = lambda f, v, a: (seen.append(a.clone()), original(f, v, a))[1]
    td3.update_critic(_batch())
    assert seen[0].abs().max() <= 0.3 + 1e-6 and (seen[0].abs() > 0.29).any()
    other = TD3(_config(target_noise=5.0, noise_clip=0.3))
    for p in other.actor_target.fc3.parameters():
        p.data.zero_()
    other.critic_target.forward = lambda f, v, a: (seen.append(a.clone()), original(f, v, a))[1]
    other.update_critic(_batch())
    assert torch.equal(seen[0], seen[1])   # same seed, same noise


def test_same_seed_same_learning_and_act_is_bounded():
    a, b = TD3(_config(seed=3)), TD3(_config(seed=3))
    c = TD3(_config(seed=4))
    assert not torch.equal(next(a.actor_cnn.parameters()), next(c.actor_cnn.parameters()))
    for i in range(3):
        a.update(_batch(i))
        b.update(_batch(i))
    for x, y in zip(a.state_dict()['networks'].values(), b.state_dict()['networks'].values(),
                    strict=True):
        for k in x:
            assert torch.equal(x[k], y[k])
    image = np.random.default_rng(0).integers(0, 256, (4, 84, 84), dtype=np.uint8)
    vector = np.zeros(53, np.float32)
    clean = a.act(image, vector)
    assert clean.shape == (2,) and clean.dtype == np.float32
    np.testing.assert_array_equal(clean, a.act(image, vector))
    assert np.abs(clean).max() <= 1.0


def test_train_from_replay_returns_finite_metrics():
    cfg = _config()
    td3 = TD3(cfg)
    replay = ReplayBuffer(32, cfg.obs, seed=0)
    rng = np.random.default_rng(0)
    for step in range(20):
        replay.add('a', 0, step, rng.integers(0, 256, (4, 84, 84), dtype=np.uint8),
                   rng.standard_normal(53), rng.uniform(-1, 1, 2), 1.0,
                   rng.integers(0, 256, (84, 84), dtype=np.uint8), rng.standard_normal(53),
                   False, False)
    metrics = td3.train(replay, 4)
    assert td3.total_it == 4
    assert set(metrics) == {'critic_loss', 'actor_loss', 'q_mean'}
    assert all(np.isfinite(v) for v in metrics.values())
    assert all(np.isnan(v) for v in td3.pop_metrics().values())   # reset after reading


def test_td3_bc_pulls_the_policy_toward_the_data_actions():
    batch = _batch()
    td3 = TD3(_config(bc_alpha=1e-6, actor_lr=1e-3))
    with torch.no_grad():
        start = torch.mean((td3.actor(td3.actor_cnn(batch.image), batch.vector)
                            - batch.action) ** 2)
    for _ in range(15):
        td3.update_actor(batch)
    with torch.no_grad():
        end = torch.mean((td3.actor(td3.actor_cnn(batch.image), batch.vector)
                          - batch.action) ** 2)
    assert end < 0.5 * start


def test_the_saturation_penalty_pulls_a_saturated_actor_back_from_full_lock():
    """A head stuck in tanh's flat tail gets no gradient from -Q; the penalty still moves it."""
    batch = _batch()

    def pre_tanh_after_updates(penalty: float) -> float:
        td3 = TD3(_config(actor_saturation_penalty=penalty, actor_lr=1e-3, precision='fp32'))
        last = td3.actor.fc3
        with torch.no_grad():
            last.bias.fill_(6.0)        # tanh(6) = 0.99999: full lock and full throttle
        for _ in range(20):
            td3.update_actor(batch)
        with torch.no_grad():
            return float(td3.actor.preactivation(td3.actor_cnn(batch.image),
                                                 batch.vector).mean())
    assert pre_tanh_after_updates(1.0) < pre_tanh_after_updates(0.0) - 0.1


@pytest.mark.parametrize('precision', ['bf16', 'fp32'])
def test_each_precision_trains_with_fp32_heads(precision):
    td3 = TD3(_config(precision=precision))
    assert td3.bf16 == (precision == 'bf16')
    batch = _batch()
    features = td3._features(td3.critic_cnn, batch.image)
    assert features.dtype == torch.float32        # heads and losses always see fp32
    before = _snapshot(td3.critic_cnn)
    td3.update(batch)
    td3.update(_batch(1))
    assert _changed(before, td3.critic_cnn)
    assert all(np.isfinite(v) for v in td3.pop_metrics().values())


def test_auto_precision_is_bf16_only_where_the_cpu_has_it():
    cpu = torch.device('cpu')
    assert resolve_bf16('auto', cpu) == native_bf16(cpu)
    if not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        assert not native_bf16(cpu)
    assert resolve_bf16('bf16', cpu) and not resolve_bf16('fp32', cpu)
    assert not resolve_bf16('auto', torch.device('cuda'))   # unmeasured there: fp32


def test_auto_precision_follows_the_kernel_levels_in_force(monkeypatch):
    """A CPU held to AVX2 (ATen capability or oneDNN ISA cap) has no native bf16: auto is fp32."""
    cpu = torch.device('cpu')
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: True)
    monkeypatch.setattr(torch.backends.cpu, 'get_cpu_capability', lambda: 'AVX512')
    monkeypatch.delenv('ONEDNN_MAX_CPU_ISA', raising=False)
    monkeypatch.delenv('DNNL_MAX_CPU_ISA', raising=False)
    assert native_bf16(cpu) and resolve_bf16('auto', cpu)
    for isa, native in (('AVX2', False), ('avx512_core', False), ('AVX512_CORE_BF16', True),
                        ('AVX512_CORE_AMX', True), ('ALL', True)):
        monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', isa)
        assert native_bf16(cpu) == native, isa
    monkeypatch.delenv('ONEDNN_MAX_CPU_ISA')
    monkeypatch.setattr(torch.backends.cpu, 'get_cpu_capability', lambda: 'AVX2')
    assert not native_bf16(cpu) and not resolve_bf16('auto', cpu)
    assert resolve_bf16('bf16', cpu)   # asked for explicitly, it is still used


def test_load_state_dict_is_all_or_nothing():
    td3 = TD3(_config())
    td3.update(_batch())
    before = td3.state_dict()
    state = TD3(_config()).state_dict()
    state['optimizers']['critic'] = {'state': {}, 'param_groups': []}   # broken optimizer
    with pytest.raises(ValueError, match='cannot load'):
        td3.load_state_dict(state)
    after = td3.state_dict()
    for name, params in before['networks'].items():
        for k, v in params.items():
            assert torch.equal(v, after['networks'][name][k])
    assert after['total_it'] == before['total_it']
