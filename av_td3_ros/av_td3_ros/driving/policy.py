"""
The deployable policy: actor_cnn + actor + observation spec, from any checkpoint kind.

A vehicle stack (the policy node) needs neither critic nor optimizer. It loads a v1 checkpoint, a
legacy av_td3_system checkpoint or a policy export (safetensors, also what the PolicyWeights topic
carries), never unpickling anything, and maps an observation to a deterministic action.
"""

from __future__ import annotations

import hashlib
import os

from av_td3_ros.driving.observation import ObservationSpec
from av_td3_ros.formats.checkpoint import CheckpointError, read_checkpoint
from av_td3_ros.formats.policy_export import parse_policy_export
from av_td3_ros.learning.config import TD3Config
from av_td3_ros.learning.networks import build_actor, build_cnn
import numpy as np
import torch


class Policy:
    """actor_cnn + actor for inference; ``act`` is deterministic (no exploration noise)."""

    def __init__(self, config: TD3Config, networks: dict[str, dict[str, torch.Tensor]],
                 version: int = 0, sha256: str = '', device: str | torch.device = 'cpu',
                 source: str = 'policy') -> None:
        self.config = config
        self.spec: ObservationSpec = config.obs
        self.version = int(version)
        self.sha256 = sha256
        self.device = torch.device(device)
        self.actor_cnn = build_cnn(config)
        self.actor = build_actor(config)
        for name, net in (('actor_cnn', self.actor_cnn), ('actor', self.actor)):
            try:
                net.load_state_dict(networks[name])
            except (KeyError, RuntimeError) as exc:
                raise CheckpointError(f'{source}: {name} weights do not fit the architecture in '
                                      f'its config: {str(exc).splitlines()[0]}') from None
            bad = [key for key, tensor in networks[name].items()
                   if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
            if bad:   # a diverged learner's NaN would drive the vehicle with NaN controls
                raise CheckpointError(f'{source}: {name} weights contain NaN or inf '
                                      f'({", ".join(bad[:3])})')
            net.to(self.device).eval().requires_grad_(False)
        self.actor_cnn.channels_last = self.device.type == 'cpu'   # as the learner computes

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = 'cpu') -> Policy:
        """Load from a v1 checkpoint, a legacy checkpoint or a policy export file."""
        raw = read_checkpoint(path)
        if raw.kind == 'policy':
            return cls.from_export_bytes(raw.content, device, source=raw.path)
        if raw.kind == 'v1':
            learner = raw.content['learner']
            networks, version = learner['networks'], int(learner['total_it'])
        else:
            content = raw.content
            networks = {'actor_cnn': content['actor_cnn_state_dict'],
                        'actor': content['actor_state_dict']}
            version = int(content.get('total_it') or 0)
        return cls(raw.config, networks, version, raw.sha256, device, source=raw.path)

    @classmethod
    def from_export_bytes(cls, data: bytes, device: str | torch.device = 'cpu',
                          source: str = 'policy export') -> Policy:
        """Load from policy-export bytes (a file's content or PolicyWeights.data)."""
        config, networks, metadata = parse_policy_export(data, source)
        return cls(config, networks, int(metadata['total_it']),
                   hashlib.sha256(bytes(data)).hexdigest(), device, source=source)

    @torch.inference_mode()
    def prepare(self) -> None:
        """
        Warm up at batch 1 now, on the loader's thread, not on the first camera frame.

        The first calls make oneDNN (or CUDA) pick and set up its kernels. No TorchScript-frozen
        graph: it saves little per act, but every trace keeps memory for good, so a training
        actor that takes fresh weights every few seconds would grow without bound (measured:
        docs/bench.md#design-measurements).
        """
        rng = np.random.default_rng(0)
        image = torch.as_tensor(rng.integers(0, 256, self.spec.image_shape, dtype=np.uint8),
                                device=self.device)[None]
        vector = torch.as_tensor(rng.standard_normal(self.spec.vector_dim, dtype=np.float32),
                                 device=self.device)[None]
        for _ in range(3):
            self._forward(image, vector)

    def _forward(self, image: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        return self.actor(self.actor_cnn(image), vector)

    @torch.inference_mode()
    def act(self, image: np.ndarray, vector: np.ndarray) -> np.ndarray:
        """Map one observation (uint8 stack, float vector) to an action, shape (action_dim,)."""
        image = np.asarray(image)
        vector = np.asarray(vector, dtype=np.float32)
        if image.shape != self.spec.image_shape:
            raise ValueError(f'image must have shape {self.spec.image_shape}, got {image.shape}')
        if vector.shape != (self.spec.vector_dim,):
            raise ValueError(f'vector must have shape ({self.spec.vector_dim},), '
                             f'got {vector.shape}')
        image_t = torch.as_tensor(image, device=self.device)[None]
        vector_t = torch.as_tensor(vector, device=self.device)[None]
        action = self._forward(image_t, vector_t)[0]
        return action.float().cpu().numpy()
