"""
The deployable policy: actor_cnn + actor + observation spec, from any checkpoint kind.

A vehicle stack (the policy node) needs neither critic nor optimizer. It loads a v1 checkpoint, a
legacy av_td3_system checkpoint or a policy export (safetensors, also what the PolicyWeights topic
carries), never unpickling anything, and maps an observation to a deterministic action.
"""

from __future__ import annotations

import hashlib
import os
import warnings

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
        self._graph: torch.jit.ScriptModule | None = None             # see prepare()

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
    def prepare(self, tolerance: float = 1e-6) -> bool:
        """
        Get ready to act at batch 1 at once: build the fast graph (CPU) and warm up (any device).

        Why: at batch 1 the networks are small enough for the framework's per-layer overhead to
        matter. On CPU, actor_cnn + actor are traced and frozen into one TorchScript graph
        (weights folded in, the first convolution's scaling precomputed, oneDNN weights packed
        once): measured under emulated AVX2 on one thread, 1.15 -> 0.9 ms per act in a loop and
        2.6 -> 2.0 ms at a 20 Hz camera's pace. The graph is kept only if it gives the eager
        networks' actions within ``tolerance`` on a random observation (otherwise the eager path
        stays). The warm-up calls make oneDNN (or CUDA) set up its kernels now, on the loader's
        thread, not on the first camera frame. Returns whether the graph is used. (TorchScript
        is deprecated in recent torch; where it is gone this falls back to the eager networks.)
        """
        rng = np.random.default_rng(0)
        image = torch.as_tensor(rng.integers(0, 256, self.spec.image_shape, dtype=np.uint8),
                                device=self.device)[None]
        vector = torch.as_tensor(rng.standard_normal(self.spec.vector_dim, dtype=np.float32),
                                 device=self.device)[None]
        expected = self.actor(self.actor_cnn(image), vector)
        if self.device.type == 'cpu':
            try:
                with warnings.catch_warnings():    # TorchScript is deprecated in torch 2.10+
                    warnings.simplefilter('ignore', DeprecationWarning)
                    graph = torch.jit.optimize_for_inference(
                        torch.jit.trace(_Networks(self.actor_cnn, self.actor), (image, vector)))
                for _ in range(3):
                    got = graph(image, vector)
                good = bool((got - expected).abs().max() <= tolerance)
            except Exception:   # an operator the tracer or freezer refuses, a torch without jit
                good = False
            self._graph = graph if good else None
        for _ in range(3):
            self._forward(image, vector)
        return self._graph is not None

    def _forward(self, image: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        if self._graph is not None and image.dtype == torch.uint8:   # the traced input type
            return self._graph(image, vector)
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


class _Networks(torch.nn.Module):
    """actor_cnn then actor, as one module to trace."""

    def __init__(self, actor_cnn: torch.nn.Module, actor: torch.nn.Module) -> None:
        super().__init__()
        self.actor_cnn, self.actor = actor_cnn, actor

    def forward(self, image: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        return self.actor(self.actor_cnn(image), vector)
