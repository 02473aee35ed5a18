"""
The TD3 learner (Fujimoto et al. 2018) with separate actor and critic CNNs; the one update.

Gradient routing (DESIGN §6): the critic loss trains ``critic_cnn`` + ``critic``; the actor loss
trains ``actor_cnn`` + ``actor`` and sees the critic's features as constants (computed under
no_grad after the critic step, as Stable-Baselines3 TD3 with ``share_features_extractor=False``).
Each CNN is in its head's optimizer, so gradient clipping covers it. All four networks have Polyak
targets, updated every ``policy_delay`` critic updates.

Determinism: weights are initialised from ``config.seed`` inside a forked RNG, target noise and
the random shifts come from private torch.Generators; both states are part of ``state_dict()``,
so a resumed run continues bit for bit (CPU, same thread count). Exploration noise is not drawn
here: the actors add it (``driving.exploration``).
Metrics (``METRICS``, by name) are accumulated on the device and read once per ``train()`` or
``pop_metrics()`` call (no per-update sync).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any

from av_td3_ros.learning.config import TD3Config
from av_td3_ros.learning.networks import build_actor, build_cnn, build_critic, prepare_image
from av_td3_ros.learning.replay import Batch, ReplayBuffer
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

NETWORKS = ('actor_cnn', 'actor', 'critic_cnn', 'critic')
TARGETS = tuple(f'{name}_target' for name in NETWORKS)
METRICS = ('critic_loss', 'actor_loss', 'q_mean')


def cpu_kernel_limits() -> tuple[str, str]:
    """
    Return the CPU kernel levels in force: (ATen's capability, oneDNN's ISA cap).

    ``ATEN_CPU_CAPABILITY`` and ``ONEDNN_MAX_CPU_ISA`` (read at start-up) can hold both below what
    the CPU has, e.g. to measure an AVX2 CPU on an AVX-512 one; 'ALL' is oneDNN without a cap.
    """
    isa = os.environ.get('ONEDNN_MAX_CPU_ISA') or os.environ.get('DNNL_MAX_CPU_ISA') or 'ALL'
    return torch.backends.cpu.get_cpu_capability(), isa.upper()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (a CPU with AVX-512 BF16 or AMX, or a GPU)."""
    if device.type == 'cuda':
        return torch.cuda.is_bf16_supported()
    if device.type == 'cpu':   # oneDNN emulates bf16 on other AVX-512 CPUs: slower than fp32
        has_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        capability, isa = cpu_kernel_limits()
        # ... and so it does when the kernels are held below AVX-512 BF16 (see cpu_kernel_limits)
        isa_keeps_bf16 = (isa == 'ALL' or isa.startswith('AVX10')
                          or any(ext in isa for ext in ('BF16', 'FP16', 'AMX')))
        return has_bf16 and isa_keeps_bf16 and capability not in ('DEFAULT', 'NO AVX', 'AVX2')
    return False


def resolve_bf16(precision: str, device: torch.device) -> bool:
    """Whether the CNNs run under bf16 autocast: ``bf16``, or ``auto`` on a native-bf16 CPU."""
    if precision == 'auto':
        # GPUs stay fp32 under auto: their speed-up has not been measured on this project.
        return device.type == 'cpu' and native_bf16(device)
    return precision == 'bf16'


class TD3:
    """TD3 learner: networks, targets, optimizers, noise generators and the update."""

    def __init__(self, config: TD3Config) -> None:
        self.config = config
        self.device = torch.device(config.device)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.actor_cnn = build_cnn(config)
            self.actor = build_actor(config)
            self.critic_cnn = build_cnn(config)
            self.critic = build_critic(config)
        # channels_last (NHWC) activations: oneDNN's fast CPU layout; the weights stay NCHW,
        # which is faster than NHWC weights (measured: docs/bench.md#design-measurements).
        self.channels_last = self.device.type == 'cpu'
        self.bf16 = resolve_bf16(config.precision, self.device)
        for name in NETWORKS:
            net = getattr(self, name).to(self.device)
            target = copy.deepcopy(net).requires_grad_(False)
            setattr(self, f'{name}_target', target)
        for name in ('actor_cnn', 'critic_cnn', 'actor_cnn_target', 'critic_cnn_target'):
            getattr(self, name).channels_last = self.channels_last
        self.actor_params = [*self.actor_cnn.parameters(), *self.actor.parameters()]
        self.critic_params = [*self.critic_cnn.parameters(), *self.critic.parameters()]
        self.actor_optimizer = self._adam(self.actor_params, config.actor_lr)
        self.critic_optimizer = self._adam(self.critic_params, config.critic_lr)
        self._online = [p for n in NETWORKS for p in getattr(self, n).parameters()]
        self._target = [p for n in TARGETS for p in getattr(self, n).parameters()]
        self.noise_generator = torch.Generator(device=self.device)
        self.noise_generator.manual_seed(config.seed + 1)
        self.augment_generator = torch.Generator(device='cpu')
        self.augment_generator.manual_seed(config.seed + 3)
        self.total_it = 0
        # Per metric name: running sum and count, 0-d tensors on the device.
        self._metric_sums = {name: torch.zeros((), device=self.device) for name in METRICS}
        self._metric_counts = {name: torch.zeros((), device=self.device) for name in METRICS}

    def _adam(self, params: list[nn.Parameter], lr: float) -> torch.optim.Adam:
        # Fused Adam: one kernel over all parameters on CPU and CUDA (torch >= 2.4).
        return torch.optim.Adam(params, lr=lr, fused=True)

    def _prepare(self, image: torch.Tensor) -> torch.Tensor:
        """Frames as the CNNs take them: float32, channels_last on CPU (float input as it is)."""
        return prepare_image(image, self.channels_last)

    def _features(self, cnn: nn.Module, image: torch.Tensor) -> torch.Tensor:
        """
        Run a CNN in the update's layout and compute precision; its features come out fp32.

        The convolutions hold almost all of the update's arithmetic, so bf16 there is where
        native bf16 pays (measured: docs/bench.md#design-measurements); the heads, the TD
        target and the losses stay fp32 so that Q values keep their precision. ``update()``
        prepares the images once, so here that is a no-op unless an update step is called on a
        raw batch.
        """
        image = self._prepare(image)
        if not self.bf16:
            return cnn(image)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            return cnn(image).float()

    # ------------------------------------------------------------------ acting

    @torch.no_grad()
    def act(self, image: np.ndarray, vector: np.ndarray) -> np.ndarray:
        """Return the deterministic action for one observation, clipped to ``max_action``."""
        image_t = torch.as_tensor(np.asarray(image, dtype=np.uint8), device=self.device)[None]
        vector_t = torch.as_tensor(np.asarray(vector, dtype=np.float32),
                                   device=self.device)[None]
        action = self.actor(self.actor_cnn(image_t), vector_t)[0].float().cpu().numpy()
        limit = self.config.max_action
        return np.clip(action, -limit, limit).astype(np.float32)

    # ------------------------------------------------------------------ learning

    def update(self, batch: Batch) -> None:
        """One TD3 step: critic every call, actor + targets every ``policy_delay`` calls."""
        if self.config.augment_pad:
            batch = self.augment(batch)
        # Convert each image batch to float once; up to three CNN passes read each.
        batch = dataclasses.replace(batch, image=self._prepare(batch.image),
                                    next_image=self._prepare(batch.next_image))
        self.update_critic(batch)
        self.total_it += 1
        if self.total_it % self.config.policy_delay == 0:
            self.update_actor(batch)
            self.update_targets()

    def update_critic(self, batch: Batch) -> None:
        """Clipped double-Q step on critic_cnn + critic (targets and actor untouched)."""
        cfg = self.config
        limit = cfg.max_action
        with torch.no_grad():
            noise = torch.randn(batch.action.shape, generator=self.noise_generator,
                                device=self.device)
            clip = cfg.noise_clip * limit
            noise = (noise * (cfg.target_noise * limit)).clamp_(-clip, clip)
            next_image = self._prepare(batch.next_image)
            next_action = (self.actor_target(self._features(self.actor_cnn_target, next_image),
                                             batch.next_vector) + noise).clamp_(-limit, limit)
            target_q1, target_q2 = self.critic_target(
                self._features(self.critic_cnn_target, next_image), batch.next_vector,
                next_action)
            discount = batch.not_done * cfg.gamma if batch.discount is None else batch.discount
            target_q = batch.reward + discount * torch.min(target_q1, target_q2)
        q1, q2 = self.critic(self._features(self.critic_cnn, batch.image), batch.vector,
                             batch.action)
        critic_loss = F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)
        self._step(self.critic_optimizer, self.critic_params, critic_loss)
        with torch.no_grad():
            self._record('critic_loss', critic_loss)
            self._record('q_mean', q1.detach().mean())

    def augment(self, batch: Batch) -> Batch:
        """DrQ-v2 random shift of the sampled stacks (obs and next obs drawn independently)."""
        pad = self.config.augment_pad
        return dataclasses.replace(batch, image=random_shift(batch.image, pad,
                                                             self.augment_generator),
                                   next_image=random_shift(batch.next_image, pad,
                                                           self.augment_generator))

    def update_actor(self, batch: Batch) -> None:
        """
        Deterministic policy-gradient step on actor_cnn + actor.

        The critic's features are computed under no_grad, so no gradient reaches critic_cnn;
        ``backward(inputs=...)`` keeps the critic head's gradients untouched too.
        """
        cfg = self.config
        image = self._prepare(batch.image)
        with torch.no_grad():
            critic_features = self._features(self.critic_cnn, image)
        pre = self.actor.preactivation(self._features(self.actor_cnn, image), batch.vector)
        pi = torch.tanh(pre) * self.actor.max_action
        q = self.critic.q1(critic_features, batch.vector, pi)
        if cfg.bc_alpha > 0:  # TD3+BC (Fujimoto & Gu 2021)
            lmbda = cfg.bc_alpha / q.abs().mean().detach().clamp_min(1e-6)
            actor_loss = -lmbda * q.mean() + F.mse_loss(pi, batch.action)
        else:
            actor_loss = -q.mean()
        if cfg.actor_saturation_penalty > 0:   # keeps tanh out of its flat tails
            actor_loss = actor_loss + cfg.actor_saturation_penalty * pre.float().pow(2).mean()
        self._step(self.actor_optimizer, self.actor_params, actor_loss)
        with torch.no_grad():
            self._record('actor_loss', actor_loss)

    @torch.no_grad()
    def update_targets(self) -> None:
        """Polyak-average all four target networks toward the online ones (one fused op)."""
        torch._foreach_lerp_(self._target, self._online, self.config.tau)

    def _step(self, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
              loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        # inputs=: only this optimizer's parameters get gradients (the critic head that the
        # actor loss runs through is not accumulated into).
        loss.backward(inputs=params)
        if self.config.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip_norm, foreach=True)
        optimizer.step()

    def _record(self, name: str, value: torch.Tensor) -> None:
        """Add one value of metric ``name`` (on the device: no sync)."""
        self._metric_sums[name] += value.detach()
        self._metric_counts[name] += 1

    def _reset_metrics(self) -> None:
        for name in METRICS:
            self._metric_sums[name].zero_()
            self._metric_counts[name].zero_()

    def train(self, replay: ReplayBuffer, n_updates: int) -> dict[str, float]:
        """Run ``n_updates`` updates on batches from ``replay``; return mean metrics."""
        self._reset_metrics()
        for _ in range(n_updates):
            self.update(replay.sample(self.config.batch_size, self.config.n_step,
                                      self.config.gamma))
        return self.pop_metrics()

    def pop_metrics(self) -> dict[str, float]:
        """Mean of each metric since the last call, NaN if none (one device sync); then reset."""
        sums = torch.stack([self._metric_sums[name] for name in METRICS])
        counts = torch.stack([self._metric_counts[name] for name in METRICS])
        means = (sums / counts.clamp_min(1)).tolist()
        counts = counts.tolist()
        self._reset_metrics()
        return {name: (float(m) if c else float('nan'))
                for name, m, c in zip(METRICS, means, counts, strict=True)}

    # ------------------------------------------------------------------ state

    def network_state(self, targets: bool = True) -> dict[str, dict[str, torch.Tensor]]:
        """State dicts of the networks (and their targets), keyed by network name."""
        names = NETWORKS + TARGETS if targets else NETWORKS
        return {name: {k: v.detach().clone() for k, v in getattr(self, name).state_dict().items()}
                for name in names}

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs (plain tensors and primitives: weights_only-safe)."""
        return {
            'networks': self.network_state(),
            'optimizers': {'actor': self.actor_optimizer.state_dict(),
                           'critic': self.critic_optimizer.state_dict()},
            'total_it': self.total_it,
            'rng': {'target_noise': self.noise_generator.get_state(),
                    'augment': self.augment_generator.get_state()},
            'config': self.config.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], weights_only: bool = False) -> None:
        """
        Load a ``state_dict()``; all or nothing.

        Raises ValueError (naming the mismatch) when networks or optimizers do not fit this
        learner; the learner is then unchanged. ``weights_only`` loads the networks only.
        """
        self.check_networks(state['networks'])
        snapshot = {'networks': self.network_state()} if weights_only else self.state_dict()
        try:
            self._load(state, weights_only)
        except Exception as exc:
            self._load(snapshot, weights_only)   # roll back: the same loader, our own state
            raise ValueError(f'cannot load learner state: {exc}') from exc

    def _load(self, state: dict[str, Any], weights_only: bool) -> None:
        """Copy a ``state_dict()`` in (unchecked; ``load_state_dict`` checks and rolls back)."""
        self._load_networks(state['networks'])
        if weights_only:
            return
        self._load_optimizer(self.actor_optimizer, state['optimizers']['actor'],
                             self.config.actor_lr)
        self._load_optimizer(self.critic_optimizer, state['optimizers']['critic'],
                             self.config.critic_lr)
        self.total_it = int(state['total_it'])
        self._set_noise_state(state['rng']['target_noise'])
        if 'augment' in state['rng']:   # files before augmentation: keep the seed
            self.augment_generator.set_state(state['rng']['augment'])
        # 'explore' (files before exploration moved to the actors) is ignored

    def _set_noise_state(self, generator_state: torch.Tensor) -> None:
        """Restore the target-noise generator; a state from another device type reseeds it."""
        try:
            self.noise_generator.set_state(generator_state)
        except RuntimeError:
            # CPU and CUDA generator states differ in kind; a cross-device resume cannot be
            # bit-exact anyway, so continue with a seed derived from the run's position.
            self.noise_generator.manual_seed(self.config.seed + 1 + self.total_it)

    def check_networks(self, networks: dict[str, dict[str, torch.Tensor]]) -> None:
        """Raise ValueError unless every online network (and given target) fits by key/shape."""
        for name in NETWORKS + TARGETS:
            if name not in networks:
                if name in NETWORKS:
                    raise ValueError(f'network {name!r} is missing')
                continue
            own = getattr(self, name).state_dict()
            theirs = networks[name]
            if not isinstance(theirs, dict):
                raise ValueError(f'network {name!r} is not a state dict')
            missing, extra = set(own) - set(theirs), set(theirs) - set(own)
            if missing or extra:
                raise ValueError(f'network {name!r}: missing keys {sorted(missing)[:4]}, '
                                 f'unexpected keys {sorted(extra)[:4]}')
            for key, tensor in own.items():
                other = theirs[key]
                if not isinstance(other, torch.Tensor) or other.shape != tensor.shape:
                    shape = tuple(other.shape) if isinstance(other, torch.Tensor) else other
                    raise ValueError(f'network {name!r} {key}: shape {shape}, expected '
                                     f'{tuple(tensor.shape)}')
                if not torch.isfinite(other).all():
                    raise ValueError(f'network {name!r} {key} contains NaN or inf')

    def _load_networks(self, networks: dict[str, dict[str, torch.Tensor]]) -> None:
        """Copy weights in; targets missing from ``networks`` become copies of the online nets."""
        with torch.no_grad():
            for name in NETWORKS:
                getattr(self, name).load_state_dict(networks[name])
            for name in NETWORKS:
                source = networks.get(f'{name}_target', networks[name])
                getattr(self, f'{name}_target').load_state_dict(source)

    def _load_optimizer(self, optimizer: torch.optim.Optimizer, state: dict,
                        lr: float) -> None:
        optimizer.load_state_dict(state)
        for group in optimizer.param_groups:   # this learner's settings win over the file's
            group['lr'] = lr
            group['fused'] = True
            group['foreach'] = None

    def reset_optimizers(self) -> None:
        """Start both optimizers afresh (legacy import: their Adam state does not map over)."""
        self.actor_optimizer = self._adam(self.actor_params, self.config.actor_lr)
        self.critic_optimizer = self._adam(self.critic_params, self.config.critic_lr)


def random_shift(image: torch.Tensor, pad: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """
    Shift each stack of ``image`` (B, stack, H, W) by a random integer offset in [-pad, pad].

    As DrQ-v2's RandomShiftsAug: replicate padding by ``pad`` pixels, then a crop back to H x W
    at a uniform random offset, one offset per sample and the same for every frame of its
    stack. Padding by slice copies and the crops as slices work on uint8 and keep dtype and
    values, several times faster than uint8 index_select or one gather of every pixel
    (measured: docs/bench.md#design-measurements).
    """
    if pad <= 0:
        return image
    b, s, h, w = image.shape
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator).tolist()
    padded = image.new_empty((b, s, h + 2 * pad, w + 2 * pad))
    padded[:, :, pad:pad + h, pad:pad + w] = image
    padded[:, :, :pad, pad:pad + w] = image[:, :, :1]            # replicate the edges
    padded[:, :, pad + h:, pad:pad + w] = image[:, :, -1:]
    padded[:, :, :, :pad] = padded[:, :, :, pad:pad + 1]
    padded[:, :, :, pad + w:] = padded[:, :, :, pad + w - 1:pad + w]
    out = torch.empty_like(image)
    for i, (dy, dx) in enumerate(offsets):
        out[i] = padded[i, :, dy:dy + h, dx:dx + w]
    return out
