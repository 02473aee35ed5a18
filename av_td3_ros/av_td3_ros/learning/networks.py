"""
The networks of DESIGN §6/§7: two CNN variants, the actor and the twin critic.

CNNs take the raw frame stack (uint8, or float pixel values from ``prepare_image``) and apply
``image_scaling`` (part of the checkpoint) themselves, folded into the first convolution's weights:
conv(a*x + b, W) = conv(x, a*W) + b*sum(W). That saves a pass over the largest tensor, and lets the
learner convert a batch to float once for all the CNNs that read it.
Parameter names follow the legacy av_td3_system (``fc1..fc3``, ``Q1.fc1..``, ``conv1, ln1, ..``)
so its state dicts load without renaming.
"""

from __future__ import annotations

from collections.abc import Sequence

from av_td3_ros.driving.observation import IMAGE_SCALINGS
import torch
from torch import nn
from torch.nn import functional as F

_SCALE = {'zero_one': (1.0 / 255.0, 0.0), 'minus_one_one': (2.0 / 255.0, -1.0)}


def prepare_image(image: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """
    Convert uint8 frames to float32 pixel values (0..255, unscaled) in one pass.

    channels_last (NHWC) makes oneDNN's CPU convolutions several times faster than NCHW
    (measured: docs/bench.md#design-measurements).
    Float input is returned as it is (already prepared).
    """
    if image.is_floating_point():
        return image
    # Transpose the uint8 frames (a quarter of the float bytes), then convert densely: one float
    # allocation per batch, faster than converting then transposing floats (a replay batch's
    # stacks are strided views of its 5-frame gather; measured: docs/bench.md#design-measurements).
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    return image.to(torch.float32)


class _ImageEncoder(nn.Module):
    """Common part of the CNN variants: input preparation and the scaled first convolution."""

    def __init__(self, image_scaling: str) -> None:
        super().__init__()
        if image_scaling not in IMAGE_SCALINGS:
            raise ValueError(f'image_scaling must be one of {IMAGE_SCALINGS}, '
                             f'got {image_scaling!r}')
        self.image_scaling = image_scaling
        # A runtime choice (the learner sets it on CPU), not part of the weights.
        self.channels_last = False

    def _first_conv(self, conv: nn.Conv2d, image: torch.Tensor) -> torch.Tensor:
        """Apply ``conv`` to the scaled image, with the scaling folded into its weights."""
        x = prepare_image(image, self.channels_last)
        scale, offset = _SCALE[self.image_scaling]
        bias = conv.bias
        if offset:
            bias = bias + offset * conv.weight.sum(dim=(1, 2, 3))
        return F.conv2d(x, conv.weight * scale, bias, conv.stride, conv.padding)


class NatureCNN(_ImageEncoder):
    """Mnih et al. 2015: conv 32x8/4, 64x4/2, 64x3/1, FC -> features_dim, ReLU (as SB3)."""

    def __init__(self, in_channels: int = 4, features_dim: int = 512,
                 image_scaling: str = 'zero_one', image_size: int = 84) -> None:
        super().__init__(image_scaling)
        # In-place ReLUs (no parameters, so the state dict is unchanged): a convolution's or a
        # linear layer's backward needs its input, not its output, so nothing saved is
        # overwritten; this spares an activation-sized allocation and pass per layer.
        self.cnn = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=8, stride=4), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, kernel_size=4, stride=2), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, kernel_size=3, stride=1), nn.ReLU(inplace=True),
            nn.Flatten())
        with torch.no_grad():
            n_flat = self.cnn(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
        self.linear = nn.Sequential(nn.Linear(n_flat, features_dim), nn.ReLU(inplace=True))
        self.features_dim = features_dim

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = torch.relu_(self._first_conv(self.cnn[0], image))
        return self.linear(self.cnn[2:](x))


class LegacyCNN(_ImageEncoder):
    """
    The original av_td3_system CNN: (conv -> LayerNorm -> LeakyReLU(0.01)) x 3, fc, LayerNorm.

    Its LayerNorm shapes fix the input to 84x84; input scaling was [-1, 1] in that system.
    """

    def __init__(self, in_channels: int = 4, features_dim: int = 512,
                 image_scaling: str = 'minus_one_one') -> None:
        super().__init__(image_scaling)
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=8, stride=4)
        self.ln1 = nn.LayerNorm([32, 20, 20])
        self.conv2 = nn.Conv2d(32, 64, kernel_size=4, stride=2)
        self.ln2 = nn.LayerNorm([64, 9, 9])
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3, stride=1)
        self.ln3 = nn.LayerNorm([64, 7, 7])
        self.fc = nn.Linear(64 * 7 * 7, features_dim)
        self.ln4 = nn.LayerNorm(features_dim)
        self.act = nn.LeakyReLU(0.01)
        self.features_dim = features_dim

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.act(self.ln1(self._first_conv(self.conv1, image)))
        x = self.act(self.ln2(self.conv2(x)))
        x = self.act(self.ln3(self.conv3(x)))
        return self.act(self.ln4(self.fc(torch.flatten(x, 1))))


class _MLP(nn.Module):
    """Linear layers ``fc1..fcN`` with ReLU between them (legacy key names)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int) -> None:
        super().__init__()
        sizes = [in_dim, *hidden, out_dim]
        self.n_layers = len(sizes) - 1
        for i in range(self.n_layers):
            self.add_module(f'fc{i + 1}', nn.Linear(sizes[i], sizes[i + 1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.n_layers):
            x = torch.relu(getattr(self, f'fc{i}')(x))
        return getattr(self, f'fc{self.n_layers}')(x)


class Actor(_MLP):
    """Deterministic policy head: tanh(MLP([features, vector])) * max_action."""

    def __init__(self, features_dim: int, vector_dim: int, action_dim: int = 2,
                 hidden: Sequence[int] = (256, 256), max_action: float = 1.0) -> None:
        super().__init__(features_dim + vector_dim, hidden, action_dim)
        self.max_action = float(max_action)

    def preactivation(self, features: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        """Return the head's output before tanh (what the saturation penalty acts on)."""
        return super().forward(torch.cat([features, vector], dim=1))

    def forward(self, features: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.preactivation(features, vector)) * self.max_action


class TwinCritic(nn.Module):
    """Two Q heads (Q1, Q2) on [features, vector, action], as in TD3's clipped double Q."""

    def __init__(self, features_dim: int, vector_dim: int, action_dim: int = 2,
                 hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        in_dim = features_dim + vector_dim + action_dim
        self.Q1 = _MLP(in_dim, hidden, 1)
        self.Q2 = _MLP(in_dim, hidden, 1)

    def forward(self, features: torch.Tensor, vector: torch.Tensor,
                action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([features, vector, action], dim=1)
        return self.Q1(x), self.Q2(x)

    def q1(self, features: torch.Tensor, vector: torch.Tensor,
           action: torch.Tensor) -> torch.Tensor:
        """Q1 only: what the actor loss needs."""
        return self.Q1(torch.cat([features, vector, action], dim=1))


def build_cnn(config) -> NatureCNN | LegacyCNN:
    """Build the CNN variant a TD3Config names."""
    if config.cnn == 'nature':
        return NatureCNN(config.obs.frame_stack, config.features_dim, config.obs.image_scaling,
                         config.obs.image_size)
    if config.cnn == 'legacy':
        return LegacyCNN(config.obs.frame_stack, config.features_dim, config.obs.image_scaling)
    raise ValueError(f'unknown cnn variant {config.cnn!r}')


def build_actor(config) -> Actor:
    """Build the actor head a TD3Config describes."""
    return Actor(config.features_dim, config.obs.vector_dim, config.action_dim, config.hidden,
                 config.max_action)


def build_critic(config) -> TwinCritic:
    """Build the twin critic a TD3Config describes."""
    return TwinCritic(config.features_dim, config.obs.vector_dim, config.action_dim,
                      config.hidden)
