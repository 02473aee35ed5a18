"""
TD3Config: every hyperparameter of the learner, typed and validated, in one place.

Defaults are DESIGN §6. Each scalar field carries its description and range in the dataclass
field metadata, so that the YAML file, the validation and the ROS parameter descriptors of the
trainer node all come from one source (``parameter_info()``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
import math
from pathlib import Path
from typing import Any, NamedTuple

from av_td3_ros.driving.observation import ObservationSpec
import torch
import yaml

__all__ = ['ObservationSpec', 'ParameterInfo', 'TD3Config', 'linear_schedule']

CNN_VARIANTS = ('nature', 'legacy')
PRECISIONS = ('auto', 'fp32', 'bf16')


class ParameterInfo(NamedTuple):
    """One scalar hyperparameter, as a ROS node declares it."""

    name: str
    default: Any
    description: str
    min_value: float | None   # None: unbounded
    max_value: float | None
    choices: tuple[str, ...] = ()

    @property
    def limits(self) -> tuple | None:
        """``(min, max)`` of a number, the allowed strings of a choice, or ``None``."""
        if self.min_value is not None or self.max_value is not None:
            return self.min_value, self.max_value
        return self.choices or None


def _p(default: Any, description: str, lo: float | None = None, hi: float | None = None,
       choices: tuple[str, ...] | None = None) -> Any:
    """Declare a dataclass field with its description, range and allowed values."""
    return field(default=default, metadata={
        'description': description, 'min': lo, 'max': hi, 'choices': choices})


@dataclass
class TD3Config:
    """Hyperparameters of TD3 with separate actor and critic CNNs (DESIGN §6)."""

    obs: ObservationSpec = field(
        default_factory=ObservationSpec,
        metadata={'description': 'observation spec (frames, image size, waypoints, scaling)'})
    action_dim: int = _p(2, 'action size: [steer, throttle_brake]', 1, 16)
    max_action: float = _p(1.0, 'actions lie in [-max_action, max_action]', 1e-3, 1e3)
    cnn: str = _p('nature', 'CNN variant: nature (NatureCNN, ReLU) or legacy '
                  '(LayerNorm + LeakyReLU, the original av_td3_system)', choices=CNN_VARIANTS)
    features_dim: int = _p(512, 'CNN output features', 8, 4096)
    hidden: tuple[int, ...] = field(
        default=(256, 256),
        metadata={'description': 'hidden layer sizes of the actor and of each critic head'})
    gamma: float = _p(0.99, 'discount factor', 0.0, 1.0)
    tau: float = _p(0.005, 'Polyak factor of the target networks', 1e-6, 1.0)
    policy_delay: int = _p(2, 'critic updates per actor + target update', 1, 100)
    target_noise: float = _p(0.2, 'std of the target policy smoothing noise '
                             '(times max_action)', 0.0, 10.0)
    noise_clip: float = _p(0.5, 'clip of the target policy smoothing noise '
                           '(times max_action)', 0.0, 10.0)
    exploration_noise: float = _p(0.1, 'std of the Gaussian exploration noise of the actors '
                                  '(times max_action)', 0.0, 10.0)
    exploration_noise_final: float = _p(
        0.1, 'exploration noise std (times max_action) reached after '
        'exploration_noise_decay_steps env steps, decaying linearly from exploration_noise '
        '(as DrQ-v2); unused while exploration_noise_decay_steps is 0', 0.0, 10.0)
    exploration_noise_decay_steps: int = _p(
        0, 'env steps of an actor over which its exploration noise decays linearly from '
        'exploration_noise to exploration_noise_final; 0 = constant exploration_noise',
        0, 1_000_000_000)
    exploration_noise_beta: float = _p(
        0.0, 'colour of the exploration noise of the actors, power spectrum 1/f^beta: 0 white '
        'Gaussian (TD3), 1 pink (Eberhard et al. 2023), 2 red; one sequence per episode', 0.0, 3.0)
    augment_pad: int = _p(
        0, 'DrQ random-shift augmentation of sampled stacks: replicate-pad by this many '
        'pixels and crop back at a random offset (one shift per stack, the same for all its '
        'frames, obs and next obs drawn independently); 0 = off (DrQ-v2 uses 4)', 0, 16)
    n_step: int = _p(
        1, 'n-step returns: the TD target sums up to n rewards along the stream and '
        'bootstraps with gamma^k (stops at a terminal; at a truncation or a gap bootstraps '
        'from the last true next observation); 1 = one-step TD3', 1, 100)
    actor_lr: float = _p(3e-4, 'Adam learning rate of actor + actor CNN', 1e-8, 1.0)
    critic_lr: float = _p(3e-4, 'Adam learning rate of critics + critic CNN', 1e-8, 1.0)
    batch_size: int = _p(256, 'transitions per update', 1, 65536)
    learning_starts: int = _p(10_000, 'transitions in the buffer before the first update',
                              0, 100_000_000)
    buffer_capacity: int = _p(1_000_000, 'replay buffer capacity (transitions)',
                              1, 100_000_000)
    grad_clip_norm: float | None = _p(
        10.0, 'clip the global gradient norm of each optimizer (CNN + head) to this; '
        '0 or null disables', 0.0, 1e6)
    samples_per_insert: float = _p(
        256.0, 'rate limiter: sampled transitions (updates x batch_size) per inserted '
        'transition, as Reverb counts them (256 at batch 256 = one update per env step); '
        '0 = unlimited', 0.0, 1e6)
    spi_error_buffer: float = _p(
        2560.0, 'rate limiter slack in sampled transitions; must be >= '
        '(samples_per_insert + batch_size) / 2 so that it cannot deadlock', 0.0, 1e12)
    bc_alpha: float = _p(
        0.0, 'TD3+BC: actor loss -lambda Q + (pi(s) - a)^2, lambda = alpha / mean|Q|; '
        '0 = plain TD3 (offline training from bags uses 2.5)', 0.0, 1e3)
    actor_saturation_penalty: float = _p(
        0.0, 'actor loss + this x mean(pre-tanh output^2): without it the pixel actor saturated '
        'at full lock within ~50 updates and never recovered (tanh gradients vanish); 0 = off '
        '(plain TD3)', 0.0, 100.0)
    device: str = _p('cpu', 'torch device of the learner (cpu, cuda, cuda:1, ...)')
    seed: int = _p(0, 'seed of network init, target noise and replay sampling', 0, 2**31 - 1)
    precision: str = _p('auto', 'compute precision of the CNNs in the update: bf16 autocast '
                        '(heads, targets and losses stay fp32), fp32, or auto = bf16 on a CPU '
                        'with native bf16 (AVX-512 BF16 / AMX), fp32 elsewhere',
                        choices=PRECISIONS)
    num_threads: int = _p(0, 'torch intra-op threads (0 = torch default)', 0, 1024)
    checkpoint_every: int = _p(10_000, 'updates between automatic checkpoints (0 = never)',
                               0, 1_000_000_000)

    def __post_init__(self) -> None:
        if isinstance(self.obs, dict):
            self.obs = ObservationSpec.from_dict(self.obs)
        if isinstance(self.hidden, list):
            self.hidden = tuple(self.hidden)
        for f in fields(self):
            value = getattr(self, f.name)
            if (f.type.startswith('float') and isinstance(value, int)
                    and not isinstance(value, bool)):
                setattr(self, f.name, float(value))  # YAML/ROS may give 1 for 1.0
        if self.grad_clip_norm is not None and self.grad_clip_norm == 0:
            self.grad_clip_norm = None
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field outside its allowed range."""
        if not isinstance(self.obs, ObservationSpec):
            raise ValueError(f'obs must be an ObservationSpec or a dict, got {type(self.obs)}')
        if (not isinstance(self.hidden, tuple) or not self.hidden
                or not all(isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= 65536
                           for h in self.hidden)):
            raise ValueError(f'hidden must be a non-empty list of ints in [1, 65536], '
                             f'got {self.hidden!r}')
        for f in fields(self):
            meta = f.metadata
            if f.name in ('obs', 'hidden'):
                continue
            value = getattr(self, f.name)
            if f.name == 'grad_clip_norm' and value is None:
                continue
            _check_scalar(f.name, value, f.type, meta)
        if self.samples_per_insert > 0 and (
                self.spi_error_buffer < (self.samples_per_insert + self.batch_size) / 2):
            raise ValueError(
                f'spi_error_buffer must be >= (samples_per_insert + batch_size) / 2 = '
                f'{(self.samples_per_insert + self.batch_size) / 2:g}, got '
                f'{self.spi_error_buffer:g}')
        try:
            torch.device(self.device)
        except (RuntimeError, ValueError):
            raise ValueError(f'device must be a torch device such as cpu, cuda or cuda:1, '
                             f'got {self.device!r}') from None
        if self.cnn == 'legacy' and self.obs.image_size != 84:
            raise ValueError(f'cnn=legacy needs obs.image_size 84 (its LayerNorm shapes are '
                             f'fixed), got {self.obs.image_size}')

    def exploration_std(self, env_steps: int) -> float:
        """Exploration noise std (times max_action) after ``env_steps`` steps of one actor."""
        return linear_schedule(self.exploration_noise, self.exploration_noise_final,
                               self.exploration_noise_decay_steps, env_steps)

    @property
    def updates_per_insert(self) -> float:
        """Update-to-data ratio implied by samples_per_insert (0 = unlimited)."""
        return self.samples_per_insert / self.batch_size

    def to_dict(self) -> dict:
        """Return plain JSON types (for YAML, checkpoints and safetensors metadata)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == 'obs':
                value = value.to_dict()
            elif f.name == 'hidden':
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict) -> TD3Config:
        """Build from a dict; unknown keys raise ValueError (a typo must not pass silently)."""
        if not isinstance(data, dict):
            raise ValueError(f'a TD3 config must be a mapping, got {type(data).__name__}')
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f'unknown TD3 config keys: {sorted(unknown)}')
        data = dict(data)
        if isinstance(data.get('obs'), dict):
            data['obs'] = ObservationSpec.from_dict(data['obs'])
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TD3Config:
        """
        Load a YAML file: a flat mapping, or a ROS 2 parameters file.

        A parameters file (``<node>: {ros__parameters: {...}}``) is unwrapped, so the same
        config/td3.yaml serves ``--params-file`` and the rclpy-free tools.
        """
        with open(path, encoding='utf-8') as stream:
            data = yaml.safe_load(stream) or {}
        if isinstance(data, dict) and len(data) == 1:
            inner = next(iter(data.values()))
            if isinstance(inner, dict) and set(inner) == {'ros__parameters'}:
                data = inner['ros__parameters']
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f'{path}: {exc}') from None

    @classmethod
    def parameter_info(cls) -> list[ParameterInfo]:
        """Describe every scalar field for ROS parameter declaration (grad_clip_norm: 0 = off)."""
        out = []
        for f in fields(cls):
            if f.name in ('obs', 'hidden'):
                continue
            meta = f.metadata
            default = 0.0 if f.default is None else f.default
            out.append(ParameterInfo(f.name, default, meta['description'], meta['min'],
                                     meta['max'], tuple(meta['choices'] or ())))
        return out

    def replace(self, **changes: Any) -> TD3Config:
        """Return a validated copy with some fields changed."""
        data = self.to_dict()
        data.update(changes)
        return TD3Config.from_dict(data)


def linear_schedule(start: float, final: float, steps: int, t: int) -> float:
    """Go linearly from ``start`` (t = 0) to ``final`` (t >= steps); ``steps`` 0: ``start``."""
    if steps <= 0:
        return start
    return start + min(max(t, 0) / steps, 1.0) * (final - start)


def _check_scalar(name: str, value: Any, type_name: str, meta: dict) -> None:
    """Check one scalar field's type and range; raise ValueError naming it."""
    if type_name == 'int':
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f'{name} must be an integer, got {value!r}')
    elif type_name.startswith('float'):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
                value):
            raise ValueError(f'{name} must be a finite number, got {value!r}')
    elif type_name == 'str' and (not isinstance(value, str) or not value):
        raise ValueError(f'{name} must be a non-empty string, got {value!r}')
    lo, hi, choices = meta['min'], meta['max'], meta['choices']
    if choices and value not in choices:
        raise ValueError(f'{name} must be one of {choices}, got {value!r}')
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f'{name} must be in [{lo:g}, {hi:g}], got {value!r}')
