"""
The policy export (DESIGN §7): the actor a vehicle deploys, also the PolicyWeights payload.

safetensors with tensors ``actor_cnn.<param>`` and ``actor.<param>`` and string metadata
``format`` = 'av_td3_ros.policy', ``version`` = '1', ``total_it``, ``config`` (the JSON of
TD3Config.to_dict()), ``package_version`` and ``torch_version``. Tag, writer, reader and
detection live here together, so the learner only hands over state dicts, the checkpoint reader
only asks which kind a file is, and the policy only builds networks from what this returns.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from av_td3_ros import __version__
from av_td3_ros.formats.errors import CheckpointError
from av_td3_ros.learning.config import TD3Config
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
import torch

if TYPE_CHECKING:
    from av_td3_ros.learning.td3 import TD3

POLICY_FORMAT = 'av_td3_ros.policy'
POLICY_VERSION = 1
POLICY_NETWORKS = ('actor_cnn', 'actor')
# a larger safetensors header is not ours (and not worth parsing to find out)
MAX_HEADER_BYTES = 100_000_000


def export_policy_bytes(networks: dict[str, dict[str, torch.Tensor]], config: TD3Config,
                        total_it: int) -> bytes:
    """Write the export of the actor_cnn/actor state dicts in ``networks`` (others ignored)."""
    tensors = {f'{name}.{key}': value.detach().to('cpu', torch.float32).contiguous()
               for name in POLICY_NETWORKS for key, value in networks[name].items()}
    metadata = {'format': POLICY_FORMAT, 'version': str(POLICY_VERSION),
                'total_it': str(int(total_it)), 'config': json.dumps(config.to_dict()),
                'package_version': __version__, 'torch_version': str(torch.__version__)}
    return safetensors_save(tensors, metadata=metadata)


def export_td3_policy(td3: TD3) -> bytes:
    """Write the export of a learner's current actor (the weights a trainer broadcasts)."""
    return export_policy_bytes(td3.network_state(targets=False), td3.config, td3.total_it)


def looks_like_policy_export(data: bytes) -> bool:
    """Whether ``data`` has safetensors framing (a policy export if any file is; cheap)."""
    if len(data) < 10:
        return False
    header_len = int.from_bytes(data[:8], 'little')
    return 2 <= header_len <= min(len(data) - 8, MAX_HEADER_BYTES) and data[8:9] == b'{'


def parse_policy_export(data: bytes, source: str = 'policy export'
                        ) -> tuple[TD3Config, dict[str, dict[str, torch.Tensor]], dict]:
    """Parse policy-export bytes into (config, {'actor_cnn': sd, 'actor': sd}, metadata)."""
    try:
        tensors = safetensors_load(bytes(data))
        metadata = _safetensors_metadata(bytes(data))
    except (SafetensorError, ValueError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f'{source}: not a readable safetensors policy export: {exc}') \
            from None
    if metadata.get('format') != POLICY_FORMAT:
        raise CheckpointError(f'{source}: safetensors file without the {POLICY_FORMAT!r} tag')
    if metadata.get('version') != str(POLICY_VERSION):
        raise CheckpointError(f'{source}: policy export version {metadata.get("version")!r} is '
                              f'not supported (this is v{POLICY_VERSION})')
    try:
        config = TD3Config.from_dict(json.loads(metadata['config']))
        int(metadata['total_it'])
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f'{source}: bad policy export metadata: {exc}') from None
    networks: dict[str, dict[str, torch.Tensor]] = {name: {} for name in POLICY_NETWORKS}
    for key, tensor in tensors.items():
        name, _, param = key.partition('.')
        if name not in networks or not param:
            raise CheckpointError(f'{source}: unexpected tensor {key!r} in a policy export')
        networks[name][param] = tensor
    return config, networks, metadata


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    header_len = int.from_bytes(data[:8], 'little')
    header = json.loads(data[8:8 + header_len].decode('utf-8'))
    metadata = header.get('__metadata__') or {}
    if not isinstance(metadata, dict):
        raise ValueError('__metadata__ is not a mapping')
    return metadata
