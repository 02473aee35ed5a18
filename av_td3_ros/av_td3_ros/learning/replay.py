"""
The replay buffer of DESIGN §6: every 84x84 frame stored once, stacks rebuilt at sample time.

Storage is a pool of frame slots. A slot holds one uint8 frame and, for the newest frame of an
observation, that observation's ego/route vector. A transition stores the slot ids of its
observation stack (``frame_stack`` ids, oldest first) and of the newest frame of the next
observation; the next stack is ``obs_ids[1:] + [next_id]``. Consecutive transitions of one stream
(actor) share slots, so a transition costs about one frame plus one vector.

Exactness does not rest on the step bookkeeping: a slot is reused only when its stored content is
byte-identical to the frame (and vector) that arrived, so episode boundaries, truncation (the true
final observation arrives as ``next_frame``), dropped messages and restarted actors all rebuild the
exact stacks the actor saw. All-zero padding frames share slot 0. Slots are reference counted;
when the pool runs out (many short episodes or gaps), the oldest transitions are evicted early, so
memory stays fixed at ``bytes_per_transition() * capacity``.
"""

from __future__ import annotations

from dataclasses import dataclass
import json
import os
import zipfile

from av_td3_ros.driving.observation import ObservationSpec
from av_td3_ros.formats.atomic_files import atomic_write
import numpy as np
import torch

REPLAY_FORMAT = 'av_td3_ros.replay'
REPLAY_VERSION = 1


@dataclass
class Batch:
    """A sampled minibatch, as tensors on the learner's device."""

    image: torch.Tensor        # (B, stack, H, W) uint8
    vector: torch.Tensor       # (B, vector_dim) float32
    action: torch.Tensor       # (B, action_dim) float32
    reward: torch.Tensor       # (B, 1) float32
    next_image: torch.Tensor   # (B, stack, H, W) uint8
    next_vector: torch.Tensor  # (B, vector_dim) float32
    not_done: torch.Tensor     # (B, 1) float32: 0 after termination, 1 otherwise (truncation too)
    # (B, 1) float32: gamma^k * not_done of an n-step sample (k rewards summed in ``reward``);
    # None for one-step samples (the target then uses gamma * not_done)
    discount: torch.Tensor | None = None


class ReplayBuffer:
    """Frame-deduplicated FIFO replay buffer with uniform sampling."""

    def __init__(self, capacity: int, spec: ObservationSpec, action_dim: int = 2,
                 device: str | torch.device = 'cpu', seed: int = 0,
                 frame_slack: float = 1.0 / 16.0) -> None:
        if capacity < 1:
            raise ValueError(f'replay capacity must be >= 1, got {capacity}')
        if not 0.0 <= frame_slack <= 4.0:
            raise ValueError(f'frame_slack must be in [0, 4], got {frame_slack}')
        self.capacity = int(capacity)
        self.spec = spec
        self.action_dim = int(action_dim)
        self.device = torch.device(device)
        self.seed = seed
        stack, size = spec.frame_stack, spec.image_size
        # Enough slots for one new frame per transition plus episode starts and gaps; at least
        # one worst-case transition (a full new stack) on top of a full buffer.
        n_slots = 1 + self.capacity + max(int(self.capacity * frame_slack), stack + 1)
        self._frames = np.zeros((n_slots, size, size), dtype=np.uint8)
        self._vectors = np.zeros((n_slots, spec.vector_dim), dtype=np.float32)
        self._refs = np.zeros(n_slots, dtype=np.uint16)
        self._obs_ids = np.zeros((self.capacity, stack), dtype=np.int32)
        self._next_id = np.zeros(self.capacity, dtype=np.int32)
        self._action = np.zeros((self.capacity, self.action_dim), dtype=np.float32)
        self._reward = np.zeros(self.capacity, dtype=np.float32)
        self._terminated = np.zeros(self.capacity, dtype=np.uint8)
        # ring position of the next transition of the same stream and episode (step + 1), or
        # -1: what n-step sampling follows. A successor is newer, so it outlives its predecessor.
        self._succ = np.full(self.capacity, -1, dtype=np.int32)
        self._reset_pointers()
        self.rng = np.random.default_rng(seed)

    def _reset_pointers(self) -> None:
        n_slots = len(self._frames)
        # LIFO free list of slot ids; slot 0 is the shared all-zero frame and never freed.
        self._free = np.arange(n_slots - 1, 0, -1, dtype=np.int32)
        self._n_free = n_slots - 1
        self._refs[:] = 0
        self._head = 0          # ring position of the oldest live transition
        self._size = 0
        self.inserts = 0        # transitions ever added (the rate limiter counts these)
        # stream_id -> (episode_id, step, slot ids of the next observation's stack, insert index
        # of its last transition)
        self._streams: dict[str, tuple[int, int, np.ndarray, int]] = {}
        self._succ[:] = -1

    def __len__(self) -> int:
        return self._size

    # ------------------------------------------------------------------ insertion

    def add(self, stream_id: str, episode_id: int, step: int, obs_frames: np.ndarray,
            obs_vector: np.ndarray, action: np.ndarray, reward: float, next_frame: np.ndarray,
            next_vector: np.ndarray, terminated: bool, truncated: bool) -> None:
        """
        Insert one transition (the fields of av_td3_interfaces/msg/Transition).

        Raises ValueError, with the buffer unchanged, for wrong shapes or non-finite values.
        ``truncated`` needs no storage: the transition bootstraps from ``next_frame`` /
        ``next_vector``, which are the true final observation.
        """
        del truncated  # bootstraps like a running step; documented in the signature only
        obs_frames, obs_vector, action, next_frame, next_vector = self._validate(
            obs_frames, obs_vector, action, reward, next_frame, next_vector)
        stack = self.spec.frame_stack
        prev = self._streams.get(stream_id)
        continues = prev is not None and prev[0] == episode_id and prev[1] + 1 == step
        candidates = prev[2] if continues else None
        ids = np.zeros(stack, dtype=np.int32)
        new_frames: list[int] = []   # stack positions that need a fresh slot
        for k in range(stack):
            frame = obs_frames[k]
            newest = k == stack - 1
            if candidates is not None and self._reusable(int(candidates[k]), frame) and (
                    not newest or np.array_equal(self._vectors[candidates[k]], obs_vector)):
                ids[k] = candidates[k]
            elif not newest and not frame.any():
                ids[k] = 0
            else:
                new_frames.append(k)
        np.add.at(self._refs, ids[ids > 0], 1)   # pin before evicting: reused slots survive
        self._make_room(len(new_frames) + 1)
        for k in new_frames:
            ids[k] = self._alloc(obs_frames[k], obs_vector if k == stack - 1 else None)
        next_id = self._alloc(next_frame, next_vector)
        self._refs[ids[new_frames]] += 1
        self._refs[next_id] += 1

        pos = (self._head + self._size) % self.capacity
        if continues and prev[3] >= self.inserts - self._size:   # predecessor still held
            self._succ[(self._head + prev[3] - (self.inserts - self._size)) % self.capacity] = pos
        self._succ[pos] = -1
        self._obs_ids[pos] = ids
        self._next_id[pos] = next_id
        self._action[pos] = action
        self._reward[pos] = reward
        self._terminated[pos] = bool(terminated)
        self._size += 1
        self.inserts += 1
        self._streams[stream_id] = (int(episode_id), int(step),
                                    np.append(ids[1:], np.int32(next_id)), self.inserts - 1)

    def _validate(self, obs_frames, obs_vector, action, reward, next_frame, next_vector):
        size, stack = self.spec.image_size, self.spec.frame_stack
        obs_frames = np.asarray(obs_frames)
        next_frame = np.asarray(next_frame)
        if obs_frames.dtype != np.uint8 or obs_frames.shape != (stack, size, size):
            raise ValueError(f'obs_frames must be uint8 {(stack, size, size)}, '
                             f'got {obs_frames.dtype} {obs_frames.shape}')
        if next_frame.dtype != np.uint8 or next_frame.shape != (size, size):
            raise ValueError(f'next_frame must be uint8 {(size, size)}, '
                             f'got {next_frame.dtype} {next_frame.shape}')
        out = []
        for name, value, dim in (('obs_vector', obs_vector, self.spec.vector_dim),
                                 ('action', action, self.action_dim),
                                 ('next_vector', next_vector, self.spec.vector_dim)):
            value = np.asarray(value, dtype=np.float32).reshape(-1)
            if value.shape != (dim,):
                raise ValueError(f'{name} must have {dim} values, got {value.size}')
            if not np.isfinite(value).all():
                raise ValueError(f'{name} contains NaN or inf')
            out.append(value)
        if not np.isfinite(reward):
            raise ValueError(f'reward must be finite, got {reward}')
        return obs_frames, out[0], out[1], next_frame, out[2]

    def _reusable(self, slot: int, frame: np.ndarray) -> bool:
        """Whether a live slot (not on the free list) holds exactly this frame."""
        return slot > 0 and self._refs[slot] > 0 and np.array_equal(self._frames[slot], frame)

    def _alloc(self, frame: np.ndarray, vector: np.ndarray | None) -> int:
        self._n_free -= 1
        slot = int(self._free[self._n_free])
        self._frames[slot] = frame
        if vector is not None:
            self._vectors[slot] = vector
        return slot

    def _release(self, slots: np.ndarray) -> None:
        slots = slots[slots > 0]
        np.subtract.at(self._refs, slots, 1)
        freed = np.unique(slots[self._refs[slots] == 0])
        self._free[self._n_free:self._n_free + len(freed)] = freed
        self._n_free += len(freed)

    def _evict_oldest(self) -> None:
        pos = self._head
        self._release(np.append(self._obs_ids[pos], self._next_id[pos]))
        self._head = (self._head + 1) % self.capacity
        self._size -= 1

    def _make_room(self, n_frames: int) -> None:
        """Free one transition slot and ``n_frames`` frame slots, evicting oldest-first."""
        if self._size == self.capacity:
            self._evict_oldest()
        while self._n_free < n_frames:
            if self._size == 0:
                raise RuntimeError('replay frame pool exhausted with no transition to evict')
            self._evict_oldest()

    # ------------------------------------------------------------------ sampling

    def _gather(self, positions: np.ndarray) -> tuple[np.ndarray, ...]:
        """Return (frames of obs + next newest: (B, stack+1, H, W), obs vec, next vec)."""
        ids = np.concatenate([self._obs_ids[positions], self._next_id[positions, None]], axis=1)
        return (self._frames[ids], self._vectors[ids[:, -2]], self._vectors[ids[:, -1]])

    def sample(self, batch_size: int, n_step: int = 1, gamma: float = 0.99) -> Batch:
        """
        Sample uniformly with replacement; one vectorised gather, one copy to the device.

        ``n_step`` > 1 returns n-step samples (see ``n_step_chains``): ``reward`` holds the
        discounted sum, ``next_*`` the true next observation of the chain's last transition and
        ``discount`` gamma^k * not_done. The sampling RNG is drawn the same way for any n.
        """
        if self._size == 0:
            raise ValueError('cannot sample from an empty replay buffer')
        positions = (self._head + self.rng.integers(0, self._size, size=batch_size)) \
            % self.capacity
        dev = self.device
        stack = self.spec.frame_stack

        def to_dev(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array).to(dev, non_blocking=True)

        if n_step <= 1:
            frames, vector, next_vector = self._gather(positions)
            frames_t = torch.from_numpy(frames).to(dev, non_blocking=True)
            return Batch(
                image=frames_t[:, :stack], vector=to_dev(vector),
                action=to_dev(self._action[positions]),
                reward=to_dev(self._reward[positions, None]),
                next_image=frames_t[:, 1:], next_vector=to_dev(next_vector),
                not_done=to_dev(1.0 - self._terminated[positions, None].astype(np.float32)))
        last, reward, discount, not_done = self.n_step_chains(positions, n_step, gamma)
        ids = np.concatenate([self._obs_ids[positions], self._obs_ids[last, 1:],
                              self._next_id[last, None]], axis=1)
        frames_t = torch.from_numpy(self._frames[ids]).to(dev, non_blocking=True)
        return Batch(
            image=frames_t[:, :stack], vector=to_dev(self._vectors[ids[:, stack - 1]]),
            action=to_dev(self._action[positions]), reward=to_dev(reward[:, None]),
            next_image=frames_t[:, stack:], next_vector=to_dev(self._vectors[ids[:, -1]]),
            not_done=to_dev(not_done[:, None]), discount=to_dev(discount[:, None]))

    def n_step_chains(self, positions: np.ndarray, n_step: int, gamma: float
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """
        Follow each ring position along its stream for up to ``n_step`` transitions.

        Returns (last position, sum_{i<k} gamma^i r_i, gamma^k * not_done, not_done) with k
        the transitions summed: the sum stops at a terminal (no bootstrap), and where the
        episode goes on unseen (a truncation, a dropped message, the newest transitions) it
        bootstraps with gamma^k from the true next observation of the last one summed.
        """
        last = np.asarray(positions, dtype=np.int64).copy()
        reward = self._reward[last].astype(np.float32)
        discount = np.full(len(last), gamma, dtype=np.float32)
        done = self._terminated[last].astype(bool)
        active = ~done
        for _ in range(n_step - 1):
            succ = self._succ[last]
            step = active & (succ >= 0)
            if not step.any():
                break
            nxt = succ[step]
            last[step] = nxt
            reward[step] += discount[step] * self._reward[nxt]
            discount[step] *= np.float32(gamma)
            done[step] = self._terminated[nxt].astype(bool)
            active = step & ~done
        not_done = (~done).astype(np.float32)
        return last, reward, discount * not_done, not_done

    def transition(self, index: int) -> dict[str, np.ndarray]:
        """Return transition ``index`` (0 = oldest) rebuilt, as numpy arrays (for tests/tools)."""
        if not 0 <= index < self._size:
            raise IndexError(f'transition {index} out of range [0, {self._size})')
        pos = np.array([(self._head + index) % self.capacity])
        frames, vector, next_vector = self._gather(pos)
        stack = self.spec.frame_stack
        return {'obs_frames': frames[0, :stack], 'obs_vector': vector[0],
                'action': self._action[pos[0]].copy(), 'reward': float(self._reward[pos[0]]),
                'next_frames': frames[0, 1:], 'next_vector': next_vector[0],
                'terminated': bool(self._terminated[pos[0]])}

    # ------------------------------------------------------------------ accounting

    def nbytes(self) -> int:
        """Bytes held by the storage arrays (allocated for full capacity)."""
        return sum(a.nbytes for a in (self._frames, self._vectors, self._refs, self._free,
                                      self._obs_ids, self._next_id, self._action,
                                      self._reward, self._terminated, self._succ))

    def bytes_per_transition(self) -> float:
        """Measure the memory cost of one transition at capacity, from the arrays' nbytes."""
        return self.nbytes() / self.capacity

    @property
    def frames_in_use(self) -> int:
        """Frame slots holding live data (the shared zero frame excluded)."""
        return len(self._frames) - 1 - self._n_free

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike) -> None:
        """
        Write the live content (compacted) to an .npz file, atomically, without pickle.

        Holds the transitions oldest-first, the frames they use, the per-stream continuation
        state and the sampling RNG state, so that sampling after ``load`` continues exactly.
        """
        atomic_write(path, self.writer())

    def writer(self):
        """Return a function writing the live content (see ``save``) to a binary stream."""
        order = (self._head + np.arange(self._size)) % self.capacity
        stream_names = sorted(self._streams)
        stream_ids = np.array([self._streams[s][2] for s in stream_names],
                              dtype=np.int32).reshape(len(stream_names), self.spec.frame_stack)
        obs_ids, next_id = self._obs_ids[order], self._next_id[order]
        succ = self._succ[order]   # as indices into the saved (oldest-first) order
        succ = np.where(succ >= 0, (succ - self._head) % self.capacity, -1).astype(np.int32)
        used = np.unique(np.concatenate([obs_ids.ravel(), next_id, stream_ids.ravel(), [0]]))
        remap = np.searchsorted(used, np.arange(len(self._frames))).astype(np.int32)
        meta = {'format': REPLAY_FORMAT, 'version': REPLAY_VERSION,
                'spec': self.spec.to_dict(), 'action_dim': self.action_dim,
                'capacity': self.capacity, 'inserts': self.inserts,
                'rng': self.rng.bit_generator.state}
        arrays = {
            'meta': np.array(json.dumps(meta)),
            'vectors': self._vectors[used],
            'obs_ids': remap[obs_ids], 'next_id': remap[next_id],
            'action': self._action[order], 'reward': self._reward[order],
            'terminated': self._terminated[order],
            'stream_names': np.array(stream_names, dtype=np.str_),
            'stream_episode': np.array([self._streams[s][0] for s in stream_names], np.int64),
            'stream_step': np.array([self._streams[s][1] for s in stream_names], np.int64),
            'stream_ids': remap[stream_ids],
            'succ': succ,
            'stream_last': np.array([self._streams[s][3] for s in stream_names], np.int64),
        }
        frames = self._frames

        def write(stream) -> None:
            # An .npz (zip of .npy) like np.savez, but the frames are copied chunk by chunk:
            # a full 1M buffer needs no second 7 GB copy to be saved.
            with zipfile.ZipFile(stream, 'w', zipfile.ZIP_STORED, allowZip64=True) as archive:
                for name, array in arrays.items():
                    with archive.open(f'{name}.npy', 'w', force_zip64=True) as member:
                        np.lib.format.write_array(member, array, allow_pickle=False)
                with archive.open('frames.npy', 'w', force_zip64=True) as member:
                    np.lib.format.write_array_header_2_0(member, {
                        'descr': np.lib.format.dtype_to_descr(frames.dtype),
                        'fortran_order': False, 'shape': (len(used), *frames.shape[1:])})
                    for start in range(0, len(used), _CHUNK_FRAMES):
                        member.write(frames[used[start:start + _CHUNK_FRAMES]].tobytes())
        return write

    def load(self, path: str | os.PathLike) -> None:
        """Replace the content with a saved buffer; unchanged (ValueError) if anything is wrong."""
        self.restore(self.read_file(path))

    def read_file(self, path: str | os.PathLike) -> dict:
        """
        Read and validate a saved buffer against this one, without changing anything.

        Raises ValueError naming the problem (not a replay file, other spec, more transitions
        than this capacity, inconsistent indices). Pass the result to ``restore``.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files if k != 'frames'}
                if 'frames' in data.files:
                    arrays['frames'] = _StoredFrames(path)
            meta = json.loads(str(arrays['meta']))
        except Exception as exc:  # OSError, BadZipFile, ValueError (pickled arrays), KeyError
            raise ValueError(f'{path}: not a readable replay file ({exc!r})') from None
        if meta.get('format') != REPLAY_FORMAT or meta.get('version') != REPLAY_VERSION:
            raise ValueError(f'{path}: not an {REPLAY_FORMAT} v{REPLAY_VERSION} file')
        if meta['spec'] != self.spec.to_dict() or meta['action_dim'] != self.action_dim:
            raise ValueError(f'{path}: saved for spec {meta["spec"]} / action_dim '
                             f'{meta["action_dim"]}, this buffer has {self.spec.to_dict()} / '
                             f'{self.action_dim}')
        names = ('frames', 'vectors', 'obs_ids', 'next_id', 'action', 'reward', 'terminated',
                 'stream_names', 'stream_episode', 'stream_step', 'stream_ids')
        missing = [k for k in names if k not in arrays]
        if missing:
            raise ValueError(f'{path}: replay file lacks arrays {missing}')
        n = len(arrays['next_id'])
        stack, size = self.spec.frame_stack, self.spec.image_size
        n_frames = len(arrays['frames'])
        n_streams = len(arrays['stream_names'])
        shapes_ok = (
            arrays['frames'].shape[1:] == (size, size) and arrays['frames'].dtype == np.uint8
            and arrays['vectors'].shape == (n_frames, self.spec.vector_dim)
            and arrays['obs_ids'].shape == (n, stack) and arrays['next_id'].shape == (n,)
            and arrays['action'].shape == (n, self.action_dim)
            and arrays['reward'].shape == (n,) and arrays['terminated'].shape == (n,)
            and arrays['stream_ids'].shape == (n_streams, stack)
            and arrays['stream_episode'].shape == arrays['stream_step'].shape == (n_streams,))
        # files written before n-step sampling have no successor links: chains stop there
        arrays.setdefault('succ', np.full(n, -1, dtype=np.int32))
        arrays.setdefault('stream_last', np.full(n_streams, -1, dtype=np.int64))
        shapes_ok = (shapes_ok and arrays['succ'].shape == (n,)
                     and arrays['stream_last'].shape == (n_streams,)
                     and bool(np.all((arrays['succ'] == -1) | (
                         (arrays['succ'] > np.arange(n)) & (arrays['succ'] < n)))))
        ids = np.concatenate([arrays['obs_ids'].ravel(), arrays['next_id'],
                              arrays['stream_ids'].ravel()]) if shapes_ok else None
        if not shapes_ok or (len(ids) and (ids.min() < 0 or ids.max() >= n_frames)):
            raise ValueError(f'{path}: inconsistent replay arrays')
        if n > self.capacity or n_frames > len(self._frames):
            raise ValueError(f'{path}: holds {n} transitions / {n_frames} frames, more than '
                             f"this buffer's capacity {self.capacity} / {len(self._frames)}")
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = meta['rng']
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f'{path}: bad RNG state ({exc})') from None
        arrays['rng'] = rng
        arrays['inserts'] = int(meta['inserts'])
        return arrays

    def restore(self, content: dict) -> None:
        """
        Replace the content with what ``read_file`` returned (already validated).

        The frames stream from the file into place; ``read_file`` has read them once already
        (the zip CRC check), so only an I/O error between the two reads can fail here.
        """
        n, n_frames = len(content['next_id']), len(content['frames'])
        self._reset_pointers()
        content['frames'].read_into(self._frames[:n_frames])
        self._vectors[:n_frames] = content['vectors']
        self._obs_ids[:n] = content['obs_ids']
        self._next_id[:n] = content['next_id']
        self._action[:n] = content['action']
        self._reward[:n] = content['reward']
        self._terminated[:n] = content['terminated']
        self._succ[:n] = content['succ']
        self._size = n
        self.inserts = content['inserts']
        live = np.concatenate([self._obs_ids[:n].ravel(), self._next_id[:n]])
        live = live[live > 0]
        self._refs[:] = np.bincount(live, minlength=len(self._frames)).astype(np.uint16)
        # Free: every slot past the loaded frames, and loaded slots that only a stream's
        # continuation state named (a later add re-checks content before reusing anything).
        slot = np.arange(len(self._frames))
        free = np.flatnonzero((slot > 0) & (self._refs == 0))
        self._free[:len(free)] = free[::-1]
        self._n_free = len(free)
        for name, episode, step, sids, last in zip(
                content['stream_names'], content['stream_episode'], content['stream_step'],
                content['stream_ids'], content['stream_last'], strict=True):
            self._streams[str(name)] = (int(episode), int(step), sids.astype(np.int32),
                                        int(last))
        self.rng = content['rng']


_CHUNK_FRAMES = 4096   # frames per read/write chunk when saving/loading (about 29 MB)


class _StoredFrames:
    """The frames array of a saved buffer: header read and CRC checked, data not in memory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = path
        with zipfile.ZipFile(path) as archive, archive.open('frames.npy') as member:
            shape, fortran, self.dtype = self._header(member)
            if fortran or len(shape) != 3:
                raise ValueError(f'frames array of shape {shape} (fortran={fortran})')
            self.shape = shape
            while member.read(1 << 24):   # zipfile verifies the CRC at the end of the member
                pass

    @staticmethod
    def _header(member) -> tuple:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(member)
        return np.lib.format.read_array_header_2_0(member)

    def __len__(self) -> int:
        return self.shape[0]

    def read_into(self, out: np.ndarray) -> None:
        """Stream the frames into ``out`` (a C-contiguous uint8 array of this shape)."""
        view = memoryview(out.reshape(-1))
        with zipfile.ZipFile(self.path) as archive, archive.open('frames.npy') as member:
            self._header(member)
            pos = 0
            while pos < len(view):
                n = member.readinto(view[pos:pos + (1 << 24)])
                if not n:
                    raise OSError(f'{self.path}: frames ended early')
                pos += n
