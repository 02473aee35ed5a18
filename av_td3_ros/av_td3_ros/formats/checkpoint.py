"""
Checkpoints (DESIGN §7): the v1 format, atomic save, safe load, legacy import, path policy.

v1 checkpoint (one ``.pth`` written with ``torch.save``, read with
``torch.load(weights_only=True)``; only tensors, dicts, lists, strings, numbers, bools, None):

    format        'av_td3_ros.checkpoint'
    version       1
    learner       TD3.state_dict():
        networks      {actor_cnn, actor, critic_cnn, critic, and each '<name>_target'}:
                      name -> {parameter name -> tensor}
        optimizers    {'actor': Adam state dict (actor_cnn + actor),
                       'critic': Adam state dict (critic_cnn + critic)}
        total_it      TD3 updates done
        rng           {'target_noise': torch.Generator state (uint8 tensor),
                       'augment': torch.Generator state of the random shifts (absent in
                       files written before augmentation: the seeded state is kept);
                       files written before exploration moved to the actors also hold
                       'explore' (a numpy PCG64 state as JSON), which loading ignores}
        config        TD3Config.to_dict(): every hyperparameter, the observation spec
                      (frame_stack, image_size, n_waypoints, image_scaling, ...), action_dim,
                      max_action, the CNN variant ('nature' | 'legacy'), features_dim, hidden
    counters      {'env_steps', 'episodes', ... free-form ints from the trainer}
    replay        None, or {'file': name of the .replay.npz beside it, 'sha256': its digest,
                  'transitions': count}: the replay buffer (frames once, RNG state) for an
                  exact resume
    metadata      {'package_version', 'torch_version', 'created' (ISO 8601 UTC), 'hostname'}

Policy exports (what a vehicle deploys; also the PolicyWeights payload) are ``policy_export``'s
format; ``read_checkpoint`` recognises them with it and ``export_policy_file`` writes them with it.

Legacy files (the original av_td3_system, plain ``torch.save`` of a dict with ``actor_state_dict``,
``critic_state_dict``, ``actor_cnn_state_dict``, ``critic_cnn_state_dict``, ``state_dim``, ...)
are recognised by their keys, read with ``weights_only=True`` too, and mapped onto the ``legacy``
CNN variant with ``minus_one_one`` image scaling; targets start as copies of the online networks
and the optimizers start afresh.

Nothing here unpickles arbitrary objects: a file that needs it is refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
import datetime
import glob
import hashlib
import io
import numbers
import os
from pathlib import Path
import pickle
import pickletools
import re
import socket
from typing import Any
import warnings
import zipfile

from av_td3_ros import __version__
from av_td3_ros.driving.observation import ObservationSpec
from av_td3_ros.formats.atomic_files import atomic_write, StagedFile
from av_td3_ros.formats.errors import CheckpointError
from av_td3_ros.formats.policy_export import (
    export_policy_bytes, looks_like_policy_export, parse_policy_export)
from av_td3_ros.learning.config import TD3Config
from av_td3_ros.learning.replay import ReplayBuffer
from av_td3_ros.learning.td3 import NETWORKS, TD3
import numpy as np
import torch

FORMAT = 'av_td3_ros.checkpoint'
VERSION = 1
LEGACY_KEYS = ('actor_state_dict', 'critic_state_dict', 'actor_cnn_state_dict',
               'critic_cnn_state_dict', 'state_dim', 'action_dim')
LEGACY_FEATURES = 512


@dataclass
class CheckpointInfo:
    """What was saved or loaded."""

    path: str
    sha256: str
    total_it: int
    kind: str   # 'v1' | 'legacy' | 'policy'


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def replay_path_for(path: str | os.PathLike) -> Path:
    """Return the replay file of checkpoint ``path``: ``<stem>.replay.npz`` beside it."""
    path = Path(path)
    return path.with_name(path.stem + '.replay.npz')


# ---------------------------------------------------------------------- saving

def _replay_files_of(path: Path) -> list[Path]:
    """Replay files a save of ``path`` may have written: ``<stem>[.<12 hex>].replay.npz``."""
    pattern = re.compile(re.escape(path.stem) + r'(\.[0-9a-f]{12})?\.replay\.npz')
    return [p for p in path.parent.glob(f'{glob.escape(path.stem)}.*replay.npz')
            if pattern.fullmatch(p.name)]


def save_checkpoint(path: str | os.PathLike, learner: TD3, replay: ReplayBuffer | None = None,
                    counters: dict | None = None) -> CheckpointInfo:
    """
    Write a v1 checkpoint atomically, with the replay buffer beside it if given.

    Both files are fully written and fsynced under temp names first, so a failed save leaves
    the previous pair intact. The replay file's sha256 is recorded in the checkpoint, so a load
    can tell a replay file of another save. The replay file is ``<stem>.replay.npz``, or, when
    that name is taken (a save over an existing checkpoint), ``<stem>.<sha256[:12]>.replay.npz``:
    never replacing the replay file of the checkpoint in place, the checkpoint's rename is the
    one commit point, and a crash at any moment leaves either the old or the new pair. The
    previous replay files of ``path`` are deleted after the commit.
    """
    path = Path(path).absolute()
    if not path.parent.is_dir():
        raise CheckpointError(f'directory {path.parent} does not exist')
    staged: list[StagedFile] = []
    try:
        replay_entry = None
        if replay is not None:
            replay_file = replay_path_for(path)
            staged.append(StagedFile(replay_file, replay.writer()))
            digest = sha256_file(staged[0].tmp)
            if replay_file.exists():
                replay_file = replay_file.with_name(f'{path.stem}.{digest[:12]}.replay.npz')
                staged[0].path = replay_file
            replay_entry = {'file': replay_file.name, 'sha256': digest,
                            'transitions': len(replay)}
        payload = {
            'format': FORMAT,
            'version': VERSION,
            'learner': learner.state_dict(),
            'counters': {str(k): int(v) for k, v in (counters or {}).items()},
            'replay': replay_entry,
            'metadata': {
                'package_version': __version__,
                'torch_version': str(torch.__version__),
                'created': datetime.datetime.now(datetime.timezone.utc).isoformat(),
                'hostname': socket.gethostname(),
            },
        }
        staged.append(StagedFile(path, lambda stream: torch.save(payload, stream)))
    except BaseException:
        for item in staged:
            item.discard()
        raise
    for item in staged:   # replay first: a checkpoint never names a replay file not there
        item.commit()
    keep = staged[0].path if replay is not None else None
    for old in _replay_files_of(path):   # of the checkpoint this one replaced
        if old != keep:
            old.unlink(missing_ok=True)
    return CheckpointInfo(str(path), sha256_file(path), learner.total_it, 'v1')


# ---------------------------------------------------------------------- reading

def _torch_load_safe(data: bytes, path: str) -> Any:
    """torch.load(weights_only=True) with every failure turned into a CheckpointError."""
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_NUMPY_SCALARS):
            warnings.simplefilter('ignore')   # torch warns about pickle protocols on stderr
            return torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        detail = text.split('WeightsUnpickler error:')[-1].strip().splitlines()
        detail = detail[0].strip() if detail else type(exc).__name__
        unsafe = [g for g in _pickle_globals(data) if not g.startswith(_SAFE_GLOBAL_PREFIXES)]
        if unsafe or 'Unsupported global' in text:
            named = f'it calls {", ".join(unsafe[:3])}' if unsafe else detail
            raise CheckpointError(
                f'{path}: refused: the file needs arbitrary unpickling, which could run code '
                f'({named})') from None
        raise CheckpointError(f'{path}: not a readable torch checkpoint (truncated or '
                              f'corrupt pickle: {detail})') from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError,
            AttributeError, IndexError, KeyError, TypeError) as exc:
        raise CheckpointError(f'{path}: not a readable torch checkpoint (truncated or '
                              f'corrupt?): {type(exc).__name__}: {exc}') from None


# numpy scalars (e.g. a float64 hyperparameter in a legacy config) rebuild from dtype + bytes and
# run no code; torch's docs name exactly these for weights_only loading.
_NUMPY_SCALAR = np._core.multiarray.scalar   # numpy >= 2; files from numpy 1 name numpy.core
_NUMPY_SCALARS = [np.dtype, _NUMPY_SCALAR, (_NUMPY_SCALAR, 'numpy.core.multiarray.scalar')] + [
    getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith('DType')]

# What a plain tensor checkpoint references; anything else is named in the refusal message.
_SAFE_GLOBAL_PREFIXES = ('torch.', 'collections.OrderedDict', '_codecs.encode',
                         'builtins.set', 'builtins.frozenset', 'builtins.bytearray',
                         'numpy.dtype', 'numpy.dtypes.', 'numpy.core.multiarray.scalar',
                         'numpy._core.multiarray.scalar')


def _pickle_globals(data: bytes) -> list[str]:
    """
    List the globals a pickle would import, by reading its opcodes (never executing them).

    For a torch zip archive the pickle inside (``*/data.pkl``) is read. Used only to say in
    words why a file was refused.
    """
    try:
        if data.startswith(b'PK\x03\x04'):
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                name = next(n for n in archive.namelist() if n.endswith('data.pkl'))
                data = archive.read(name)
        found, strings = [], []
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ('SHORT_BINUNICODE', 'BINUNICODE', 'UNICODE', 'BINUNICODE8'):
                strings.append(str(arg))
            elif opcode.name == 'GLOBAL':
                found.append(str(arg).replace(' ', '.'))
            elif opcode.name == 'STACK_GLOBAL' and len(strings) >= 2:
                found.append(f'{strings[-2]}.{strings[-1]}')
        return found
    except Exception:  # a malformed pickle: nothing more to say than the loader's error
        return []


@dataclass
class RawCheckpoint:
    """A checkpoint file read and classified, not yet applied to anything."""

    path: str
    kind: str                 # 'v1' | 'legacy' | 'policy'
    sha256: str
    content: Any              # dict for v1/legacy, bytes for a policy export
    config: TD3Config


def read_checkpoint(path: str | os.PathLike) -> RawCheckpoint:
    """Read, classify and validate the framing of any checkpoint file; never runs file code."""
    path_str = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f'{path_str}: no such file') from None
    except IsADirectoryError:
        raise CheckpointError(f'{path_str}: is a directory, not a checkpoint file') from None
    except OSError as exc:
        raise CheckpointError(f'{path_str}: cannot read: {exc.strerror or exc}') from None
    if not data:
        raise CheckpointError(f'{path_str}: empty file')
    sha = hashlib.sha256(data).hexdigest()
    if looks_like_policy_export(data):
        config, _, _ = parse_policy_export(data, path_str)
        return RawCheckpoint(path_str, 'policy', sha, data, config)
    if not (data.startswith(b'PK\x03\x04') or data[0] == 0x80):
        raise CheckpointError(f'{path_str}: not a checkpoint (neither a torch zip archive nor a '
                              f'safetensors file; starts with {data[:8]!r})')
    content = _torch_load_safe(data, path_str)
    if not isinstance(content, dict):
        raise CheckpointError(f'{path_str}: not a checkpoint (top level is '
                              f'{type(content).__name__}, expected a dict)')
    if content.get('format') == FORMAT:
        if content.get('version') != VERSION:
            raise CheckpointError(f'{path_str}: checkpoint format version '
                                  f'{content.get("version")!r} is not supported (this is '
                                  f'v{VERSION})')
        try:
            learner = content['learner']
            config = TD3Config.from_dict(learner['config'])
            missing = [k for k in ('networks', 'optimizers', 'total_it', 'rng')
                       if k not in learner]
            if missing:
                raise KeyError(f'learner state lacks {missing}')
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f'{path_str}: damaged v1 checkpoint: {exc}') from None
        return RawCheckpoint(path_str, 'v1', sha, content, config)
    if all(key in content for key in LEGACY_KEYS):
        return RawCheckpoint(path_str, 'legacy', sha, content,
                             legacy_config(content, path_str))
    raise CheckpointError(f'{path_str}: a torch file but not an av_td3 checkpoint (no format '
                          f'tag and no legacy keys; top-level keys: {sorted(content)[:8]})')


def legacy_config(content: dict, path: str = 'legacy checkpoint') -> TD3Config:
    """Derive the TD3Config that a legacy av_td3_system checkpoint's networks fit."""
    try:
        state_dim = int(content['state_dim'])
        action_dim = int(content['action_dim'])
        actor = content['actor_state_dict']
        vector_dim = state_dim - LEGACY_FEATURES
        n_waypoints, odd = divmod(vector_dim - 3, 2)
        if odd or n_waypoints < 1:
            raise ValueError(f'state_dim {state_dim} does not give a 3 + 2n vector')
        hidden = []
        i = 1
        while f'fc{i + 1}.weight' in actor:
            hidden.append(int(actor[f'fc{i}.weight'].shape[0]))
            i += 1
        frame_stack = int(content['actor_cnn_state_dict']['conv1.weight'].shape[1])
        features = int(content['actor_cnn_state_dict']['fc.weight'].shape[0])
        if features != LEGACY_FEATURES:
            raise ValueError(f'legacy CNN gives {features} features, expected 512')
        hyper = {}
        for ours, theirs in (('gamma', 'discount'), ('tau', 'tau'),
                             ('policy_delay', 'policy_freq'), ('target_noise', 'policy_noise'),
                             ('noise_clip', 'noise_clip'), ('max_action', 'max_action')):
            value = content.get(theirs)
            if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
                hyper[ours] = int(value) if ours == 'policy_delay' else float(value)
        return TD3Config(
            obs=ObservationSpec(frame_stack=frame_stack, n_waypoints=n_waypoints,
                                image_scaling='minus_one_one'),
            action_dim=action_dim, cnn='legacy', features_dim=LEGACY_FEATURES,
            hidden=tuple(hidden), **hyper)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f'{path}: legacy checkpoint with unexpected content: '
                              f'{type(exc).__name__}: {exc}') from None


def _legacy_networks(content: dict) -> dict[str, dict]:
    return {'actor_cnn': content['actor_cnn_state_dict'], 'actor': content['actor_state_dict'],
            'critic_cnn': content['critic_cnn_state_dict'],
            'critic': content['critic_state_dict']}


def architecture_of(config: TD3Config) -> dict:
    """Return the config fields that decide network shapes (must match to load weights)."""
    return {'cnn': config.cnn, 'features_dim': config.features_dim,
            'hidden': list(config.hidden), 'action_dim': config.action_dim,
            'frame_stack': config.obs.frame_stack, 'image_size': config.obs.image_size,
            'vector_dim': config.obs.vector_dim}


def check_compatible(config: TD3Config, learner_config: TD3Config, path: str) -> None:
    """Raise CheckpointError if a file's networks, spec or scaling differ from the learner's."""
    theirs, ours = architecture_of(config), architecture_of(learner_config)
    diffs = [f'{k} {theirs[k]!r} (learner: {ours[k]!r})' for k in ours if theirs[k] != ours[k]]
    if config.obs != learner_config.obs:
        diffs += [f'obs.{k} {v!r} (learner: {getattr(learner_config.obs, k)!r})'
                  for k, v in config.obs.to_dict().items()
                  if getattr(learner_config.obs, k) != v and f'{k} ' not in ' '.join(diffs)]
    if config.max_action != learner_config.max_action:
        diffs.append(f'max_action {config.max_action} (learner: {learner_config.max_action})')
    if diffs:
        raise CheckpointError(f'{path}: incompatible with this learner: ' + '; '.join(diffs))


# ---------------------------------------------------------------------- loading

def load_checkpoint(path: str | os.PathLike, learner: TD3, replay: ReplayBuffer | None = None,
                    weights_only: bool = False) -> tuple[CheckpointInfo, dict]:
    """
    Load a v1 or legacy checkpoint into ``learner`` (and ``replay``); return (info, counters).

    Everything is validated before anything changes: a refused file leaves the learner (and
    replay) bit-identical. ``weights_only`` loads the networks only. A v1 file's replay buffer is
    loaded when ``replay`` is given, the checkpoint names one and weights_only is false.
    """
    raw = read_checkpoint(path)
    if raw.kind == 'policy':
        raise CheckpointError(f'{raw.path}: a policy export (actor only) cannot be loaded into '
                              f'a learner; deploy it with Policy.load or load a .pth checkpoint')
    check_compatible(raw.config, learner.config, raw.path)
    counters: dict = {}
    replay_content = None
    if raw.kind == 'v1':
        state = raw.content['learner']
        counters = dict(raw.content.get('counters') or {})
        entry = raw.content.get('replay')
        if replay is not None and entry and not weights_only:
            replay_file = Path(raw.path).with_name(entry['file'])
            if not replay_file.is_file():
                raise CheckpointError(f'{raw.path}: its replay file {replay_file} is missing')
            if sha256_file(replay_file) != entry['sha256']:
                raise CheckpointError(f'{raw.path}: replay file {replay_file} does not match '
                                      f'the checkpoint (sha256 differs)')
            try:
                replay_content = replay.read_file(replay_file)
            except ValueError as exc:
                raise CheckpointError(str(exc)) from None
    else:   # legacy: networks only; targets copied, optimizers fresh
        state = {'networks': _legacy_networks(raw.content),
                 'total_it': int(raw.content.get('total_it') or 0)}
    try:
        learner.check_networks(state['networks'])
        learner.load_state_dict(state, weights_only=weights_only or raw.kind == 'legacy')
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(f'{raw.path}: {exc}') from None
    if raw.kind == 'legacy' and not weights_only:
        learner.reset_optimizers()
        learner.total_it = state['total_it']
    if replay_content is not None:
        replay.restore(replay_content)   # validated above; cannot fail now
    return CheckpointInfo(raw.path, raw.sha256, int(state['total_it']), raw.kind), counters


# ---------------------------------------------------------------------- paths

def resolve_checkpoint_path(requested: str, checkpoint_dir: str | os.PathLike,
                            allowed_dirs: list[str] | None = None) -> Path:
    """
    Resolve a requested path (relative: against checkpoint_dir) and enforce the allowed dirs.

    Symlinks are resolved first, so a link inside an allowed directory that points outside is
    refused. Raises CheckpointError with the reason.
    """
    if not requested or not str(requested).strip():
        raise CheckpointError('empty checkpoint path')
    if '\x00' in requested:
        raise CheckpointError('checkpoint path contains a NUL byte')
    base = Path(checkpoint_dir).expanduser()
    candidate = Path(requested).expanduser()
    if not candidate.is_absolute():
        candidate = base / candidate
    resolved = candidate.resolve()
    roots = [base.resolve()] + [Path(d).expanduser().resolve() for d in (allowed_dirs or []) if d]
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise CheckpointError(f'{requested}: resolves to {resolved}, outside the allowed '
                              f'checkpoint directories ({", ".join(map(str, roots))})')
    return resolved


def newest_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    """Return the most recently written ``*.pth`` in the directory (None if there is none)."""
    directory = Path(checkpoint_dir)
    if not directory.is_dir():
        return None
    files = [p for p in directory.glob('*.pth') if p.is_file() and not p.name.startswith('.')]
    if not files:
        return None
    return max(files, key=lambda p: (p.stat().st_mtime_ns, p.name))


def find_checkpoint(requested: str, checkpoint_dir: str | os.PathLike,
                    allowed_dirs: list[str] | tuple[str, ...] | None = None) -> Path:
    """
    Find the checkpoint a request names: empty means the newest in ``checkpoint_dir``.

    A non-empty path is resolved as ``resolve_checkpoint_path`` does (relative: against
    ``checkpoint_dir``); the newest file is put through the same check, so a link to outside the
    allowed directories is refused either way. Raises CheckpointError with the reason.
    """
    if not requested:
        newest = newest_checkpoint(checkpoint_dir)
        if newest is None:
            raise CheckpointError(f'no checkpoint in {checkpoint_dir}')
        requested = str(newest)
    return resolve_checkpoint_path(requested, checkpoint_dir, list(allowed_dirs or []))


def remove_stale_temp_files(checkpoint_dir: str | os.PathLike) -> list[Path]:
    """
    Delete the temp files of checkpoint writes that never finished; return what was removed.

    StagedFile names them ``.<final name>.<random>.tmp``; only those of ``*.pth`` and
    ``*.replay.npz`` files are touched. Call it at start, before this process writes: a temp
    file is never picked as a checkpoint, but a killed save leaves one per file it was writing.
    """
    directory = Path(checkpoint_dir)
    removed = []
    for pattern in ('.*.pth.*.tmp', '.*.replay.npz.*.tmp'):
        for path in directory.glob(pattern):
            if path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed.append(path)
    return sorted(removed)


# ---------------------------------------------------------------------- tools

def inspect_checkpoint(path: str | os.PathLike) -> dict:
    """Summarise a checkpoint as plain JSON types (what ``checkpoint_tool inspect`` prints)."""
    raw = read_checkpoint(path)
    out: dict[str, Any] = {
        'path': str(Path(raw.path).absolute()), 'format': raw.kind, 'sha256': raw.sha256,
        'size_bytes': Path(raw.path).stat().st_size,
        'architecture': architecture_of(raw.config),
        'observation_spec': raw.config.obs.to_dict(),
    }
    if raw.kind == 'v1':
        learner = raw.content['learner']
        out.update(version=raw.content['version'], total_it=int(learner['total_it']),
                   counters=raw.content.get('counters') or {},
                   replay=raw.content.get('replay'), metadata=raw.content.get('metadata') or {},
                   config=raw.config.to_dict())
    elif raw.kind == 'legacy':
        out.update(version=0, total_it=int(raw.content.get('total_it') or 0),
                   state_dim=int(raw.content['state_dim']),
                   config=raw.config.to_dict())
    else:
        _, _, metadata = parse_policy_export(raw.content, raw.path)
        out.update(version=int(metadata['version']), total_it=int(metadata['total_it']),
                   metadata={k: v for k, v in metadata.items() if k != 'config'},
                   config=raw.config.to_dict())
    return out


def export_policy_file(path: str | os.PathLike, out: str | os.PathLike) -> CheckpointInfo:
    """Write the policy export (safetensors) of a v1 or legacy checkpoint, atomically."""
    raw = read_checkpoint(path)
    if raw.kind == 'policy':
        data = raw.content
        total_it = int(inspect_checkpoint(path)['total_it'])
    else:
        if raw.kind == 'v1':
            networks = raw.content['learner']['networks']
            total_it = int(raw.content['learner']['total_it'])
        else:
            networks = _legacy_networks(raw.content)
            total_it = int(raw.content.get('total_it') or 0)
        learner = TD3(raw.config)   # validates shapes against the architecture
        try:
            learner.check_networks({n: networks[n] for n in NETWORKS})
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f'{raw.path}: {exc}') from None
        data = export_policy_bytes(networks, raw.config, total_it)
    atomic_write(Path(out), lambda stream: stream.write(data))
    return CheckpointInfo(str(Path(out).absolute()), sha256_file(out), total_it, 'policy')


def convert_legacy(path: str | os.PathLike, out: str | os.PathLike) -> CheckpointInfo:
    """Convert a legacy av_td3_system checkpoint to a v1 checkpoint."""
    raw = read_checkpoint(path)
    if raw.kind != 'legacy':
        raise CheckpointError(f'{raw.path}: not a legacy checkpoint (it is {raw.kind})')
    learner = TD3(raw.config)
    load_checkpoint(path, learner)
    return save_checkpoint(out, learner)


__all__ = [
    'FORMAT', 'VERSION', 'CheckpointError', 'CheckpointInfo', 'convert_legacy',
    'export_policy_file', 'find_checkpoint', 'inspect_checkpoint', 'load_checkpoint',
    'newest_checkpoint', 'read_checkpoint', 'remove_stale_temp_files', 'replay_path_for',
    'resolve_checkpoint_path', 'save_checkpoint', 'sha256_file']
