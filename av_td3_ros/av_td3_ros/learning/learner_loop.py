"""
The learner loop: replay inserts, the samples-per-insert limiter, TD3 updates and checkpoints.

The trainer node (and offline training from bags) drive TD3 through one ``Learner`` so that the
threading lives in one place and is testable without ROS:

- ``insert()`` is called by the transport (a ROS subscription, a bag reader). It takes only the
  replay lock, so a running update delays it by at most one ``sample()``, never a whole update.
- ``start()`` runs the updates in a background thread. Each update holds the model lock for its
  own duration only, so ``save()``, ``load()`` and weight exports slot in between two updates:
  that is how a service call pauses the learner safely. Lock order is always model, then replay.
- Every ``checkpoint_every`` updates the learner state is snapshotted under the model lock
  (cloned tensors, tens of milliseconds) and written by a writer thread, so disk I/O never
  stalls the updates. Every write (``save()`` too) is queued on that one thread while the model
  lock is held, so writes land in state order; a periodic write never replaces a file it did
  not write (an earlier run's, a save's), and the keep_checkpoints rotation deletes only files
  that are still the ones it wrote.
- In synchronous mode the SamplesPerInsertLimiter gates updates and gives the insert allowance
  that actors wait on (DESIGN §6); in realtime mode the learner runs as fast as it can once the
  buffer holds ``learning_starts`` transitions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
import copy
from dataclasses import dataclass, field, replace
import hashlib
import math
from pathlib import Path
import threading
import time
import traceback
from typing import Any

from av_td3_ros.formats.checkpoint import (
    CheckpointInfo, load_checkpoint, save_checkpoint)
from av_td3_ros.formats.policy_export import export_td3_policy
from av_td3_ros.learning.config import TD3Config
from av_td3_ros.learning.rate_limiter import SamplesPerInsertLimiter
from av_td3_ros.learning.replay import ReplayBuffer
from av_td3_ros.learning.td3 import TD3
import numpy as np
import torch

MODES = ('synchronous', 'realtime')
STEP_CHECKPOINT_FORMAT = 'td3_step_{total_it}.pth'
METRICS_PERIOD_S = 0.5


def step_checkpoint_path(checkpoint_dir: str | Path, total_it: int) -> Path:
    """Return the default checkpoint file name for ``total_it`` (DESIGN §4)."""
    return Path(checkpoint_dir) / STEP_CHECKPOINT_FORMAT.format(total_it=total_it)


@dataclass(frozen=True)
class LearnerOptions:
    """How the loop runs around TD3 (the hyperparameters themselves are in TD3Config)."""

    checkpoint_dir: str
    mode: str = 'synchronous'
    broadcast_every: int = 100
    keep_checkpoints: int = 5

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, got {self.mode!r}')
        if self.broadcast_every < 1:
            raise ValueError(f'broadcast_every must be >= 1, got {self.broadcast_every}')
        if self.keep_checkpoints < 0:
            raise ValueError(f'keep_checkpoints must be >= 0, got {self.keep_checkpoints}')


@dataclass(frozen=True)
class WeightsUpdate:
    """A policy export ready to broadcast (PolicyWeights message content)."""

    version: int
    total_it: int
    data: bytes
    sha256: str


@dataclass(frozen=True)
class LearnerStats:
    """Learner progress, the content of TrainerStats and of the TensorBoard scalars."""

    total_it: int
    transitions: int
    buffer_size: int
    episodes: int
    weights_version: int
    updates_per_s: float
    critic_loss: float
    actor_loss: float
    q_mean: float
    samples_per_insert: float
    insert_allowance: int
    actors: dict[str, ActorTally] = field(default_factory=dict)   # by actor_id, a copy


@dataclass
class ActorTally:
    """What one actor (a transition stream) delivered: for fleets and lossy links."""

    transitions: int = 0
    # (episode, step) not after the stream's previous one: a repeat, a reordering or a restart
    out_of_order: int = 0
    # steps skipped inside an episode: transitions lost on the way (a slow learner, a link)
    missed: int = 0
    policy_version: int = 0     # of its newest transition
    last: tuple[int, int] = (-1, -1)

    def count(self, episode_id: int, step: int, policy_version: int) -> None:
        if (episode_id, step) <= self.last:
            self.out_of_order += 1
        elif episode_id == self.last[0]:
            self.missed += step - self.last[1] - 1
        self.last = (episode_id, step)
        self.transitions += 1
        self.policy_version = policy_version


class _RateMeter:
    """Updates per second over a sliding window of a few seconds."""

    def __init__(self, window_s: float = 5.0) -> None:
        self._window_s = window_s
        self._points: deque[tuple[float, int]] = deque()

    def add(self, count: int) -> None:
        now = time.monotonic()
        self._points.append((now, count))
        while len(self._points) > 2 and now - self._points[0][0] > self._window_s:
            self._points.popleft()

    def rate(self) -> float:
        if len(self._points) < 2:
            return 0.0
        (t0, c0), (t1, c1) = self._points[0], self._points[-1]
        if time.monotonic() - t1 > self._window_s:
            return 0.0  # stalled: no update for a whole window
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0


class Learner:
    """
    TD3 + replay buffer + rate limiter + checkpoint schedule, safe to drive from several threads.

    Callbacks run outside the locks: ``on_weights`` (learner or caller thread) with each new
    export, ``on_checkpoint`` (writer thread) after each periodic checkpoint, ``on_error`` with a
    message when the update thread or a periodic write fails, ``on_unblock`` when the insert
    allowance turns positive again so actors waiting on it can be told at once.
    """

    def __init__(self, config: TD3Config, options: LearnerOptions,
                 on_weights: Callable[[WeightsUpdate], None] | None = None,
                 on_checkpoint: Callable[[CheckpointInfo], None] | None = None,
                 on_error: Callable[[str], None] | None = None,
                 on_unblock: Callable[[], None] | None = None) -> None:
        if config.buffer_capacity < max(config.learning_starts, config.batch_size):
            # the buffer could never hold enough to start, while the limiter holds the actors
            raise ValueError(f'buffer_capacity ({config.buffer_capacity}) must be >= '
                             f'learning_starts ({config.learning_starts}) and batch_size '
                             f'({config.batch_size})')
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.config = config
        self.options = options
        self.td3 = TD3(config)
        self.replay = ReplayBuffer(config.buffer_capacity, config.obs, config.action_dim,
                                   device=config.device, seed=config.seed)
        self._on_weights = on_weights
        self._on_checkpoint = on_checkpoint
        self._on_error = on_error
        self._on_unblock = on_unblock
        spi = config.samples_per_insert if options.mode == 'synchronous' else 0.0
        self._min_size = max(config.learning_starts, config.batch_size)
        self._limiter = SamplesPerInsertLimiter(spi, self._min_size, config.spi_error_buffer)
        self._model_lock = threading.Lock()
        self._replay_lock = threading.Lock()
        self._data_ready = threading.Condition(self._replay_lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix='checkpoint-writer')
        self._pending_write: Future | None = None
        self._shadow: TD3 | None = None  # writer thread's copy, loaded from snapshots
        self._written: deque[tuple[Path, tuple[int, int]]] = deque()
        self._told_exists = False
        self._rate = _RateMeter()
        # transitions/episodes are lifetime counts (a full load restores them); the limiter
        # compares the buffer's inserts with the updates done on this buffer's content
        self._transitions = 0
        self._episodes = 0
        self._actors: dict[str, ActorTally] = {}
        self._buffer_updates = 0
        self._blocked = False
        self._version = 0
        self._metrics: dict[str, float] = {}
        self._metrics_time = 0.0

    # ----------------------------------------------------------------------------- inserts
    def insert(self, actor_id: str, episode_id: int, step: int, obs_frames: Any,
               obs_vector: Any, action: Any, reward: float, next_frame: Any, next_vector: Any,
               terminated: bool, truncated: bool, policy_version: int = 0) -> None:
        """
        Add one transition (the fields of av_td3_interfaces/msg/Transition) to the buffer.

        Frames may come flat (a message's uint8[]) or shaped. Raises ValueError naming the
        field for a wrong size, a non-finite value, an action outside [-max_action,
        max_action] or a reward beyond float32; nothing is stored then.
        """
        shape = self.config.obs.image_shape
        frames = _frames('obs_frames', obs_frames, shape)
        frame = _frames('next_frame', next_frame, shape[1:])
        _check_action_and_reward(action, reward, self.config.action_dim, self.config.max_action)
        with self._data_ready:
            self.replay.add(actor_id, int(episode_id), int(step), frames, obs_vector, action,
                            float(reward), frame, next_vector, bool(terminated), bool(truncated))
            self._transitions += 1
            self._actors.setdefault(actor_id, ActorTally()).count(
                int(episode_id), int(step), int(policy_version))
            if terminated or truncated:
                self._episodes += 1
            self._data_ready.notify_all()

    # ----------------------------------------------------------------------------- updates
    def start(self) -> None:
        """Run updates in a background thread until ``stop()``."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name='td3-learner', daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the update thread and wait for checkpoint writes in progress."""
        self._stop.set()
        with self._data_ready:
            self._data_ready.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._writer.shutdown(wait=True)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self.update_once():
                    with self._data_ready:
                        if not self._can_sample_locked() and not self._stop.is_set():
                            self._data_ready.wait(0.1)
        except Exception:  # the node must outlive a failed update and say why
            if self._on_error is None:
                raise
            self._on_error(f'learner thread stopped:\n{traceback.format_exc()}')

    def _can_sample_locked(self) -> bool:
        return len(self.replay) >= self._min_size and self._limiter.can_sample(
            self._buffer_updates, self.replay.inserts, self.config.batch_size)

    def _allowance_locked(self) -> int:
        return self._limiter.insert_allowance(
            self._buffer_updates, self.replay.inserts, self.config.batch_size)

    def update_once(self) -> bool:
        """
        Do one TD3 update if the buffer and the rate limiter allow it; return whether it ran.

        Also broadcasts weights and schedules a checkpoint when their period comes round.
        Callable from any thread (the offline trainer calls it in its own loop).
        """
        export = snapshot = skipped = None
        with self._model_lock:
            with self._replay_lock:
                if not self._can_sample_locked():
                    return False
                batch = self.replay.sample(self.config.batch_size, self.config.n_step,
                                           self.config.gamma)
            self.td3.update(batch)
            total_it = self.td3.total_it
            now = time.monotonic()
            if now - self._metrics_time >= METRICS_PERIOD_S:  # one device sync per period
                self._metrics = self.td3.pop_metrics()
                self._metrics_time = now
            if total_it % self.options.broadcast_every == 0:
                export = self._export_locked()
            every = self.config.checkpoint_every
            if every and total_it % every == 0:
                snapshot = self._snapshot_locked()
                # queued while the model lock is held: a save() of the same update (same
                # default name) is queued after it and so is never overwritten by it
                skipped = self._schedule_checkpoint(*snapshot)
        self._rate.add(total_it)
        unblocked = False
        with self._replay_lock:
            self._buffer_updates += 1
            allowance = self._allowance_locked()
            if allowance != 0 and self._blocked:
                unblocked = True
            self._blocked = allowance == 0
        if unblocked and self._on_unblock is not None:
            self._on_unblock()
        if export is not None and self._on_weights is not None:
            self._on_weights(export)
        if snapshot is not None and skipped and self._on_error is not None:
            self._on_error(skipped)
        return True

    # ----------------------------------------------------------------------------- weights
    def _export_locked(self) -> WeightsUpdate:
        data = export_td3_policy(self.td3)
        self._version += 1
        return WeightsUpdate(self._version, self.td3.total_it, data,
                             hashlib.sha256(data).hexdigest())

    # ----------------------------------------------------------------------------- checkpoints
    def _counters_locked(self, with_replay: bool = False) -> dict[str, int]:
        counters = {'total_it': self.td3.total_it, 'env_steps': self._transitions,
                    'episodes': self._episodes, 'weights_version': self._version}
        if with_replay:  # the rate limiter state that goes with the saved buffer
            counters.update(buffer_updates=self._buffer_updates,
                            replay_inserts=self.replay.inserts)
        return counters

    def _snapshot_locked(self) -> tuple[dict, dict[str, int]]:
        state = self.td3.state_dict()  # network tensors come cloned; optimizer state is live
        state['optimizers'] = copy.deepcopy(state['optimizers'])
        return state, self._counters_locked()

    def _write_snapshot(self, state: dict, counters: dict[str, int],
                        path: Path) -> tuple[CheckpointInfo, tuple[int, int]]:
        if self._shadow is None:
            self._shadow = TD3(self.config)
        self._shadow.load_state_dict(state)
        info = save_checkpoint(path, self._shadow, None, counters)
        return info, _file_identity(path)

    def _schedule_checkpoint(self, state: dict, counters: dict[str, int]) -> str | None:
        """Queue a periodic write (model lock held); return why it was skipped, if it was."""
        if self._pending_write is not None and not self._pending_write.done():
            return (f'checkpoint at update {counters["total_it"]} skipped: the previous write '
                    'is still running (raise checkpoint_every)')
        path = step_checkpoint_path(self.options.checkpoint_dir, counters['total_it'])
        if path.exists() and path not in {p for p, _ in self._written}:
            # a file of an earlier run (or a save): replacing it, and deleting it later in the
            # keep_checkpoints rotation, would lose a checkpoint somebody may have been told of
            if self._told_exists:
                return None
            self._told_exists = True
            return (f'periodic checkpoint {path.name} skipped: the file exists (an earlier run '
                    f'or a save wrote it) and is not replaced; so are later ones that exist '
                    f'(said once)')
        future = self._writer.submit(self._write_snapshot, state, counters, path)
        future.add_done_callback(self._checkpoint_written)
        self._pending_write = future
        return None

    def _checkpoint_written(self, future: Future) -> None:
        exc = future.exception()
        if exc is not None:
            if self._on_error is not None:
                self._on_error(f'periodic checkpoint failed: {exc}')
            return
        info, identity = future.result()
        self._written.append((Path(info.path), identity))
        while self.options.keep_checkpoints and len(self._written) > self.options.keep_checkpoints:
            old, old_identity = self._written.popleft()
            # only the file this writer wrote: a save() to the same name since replaced it
            # (another inode), and what the save service reported must stay
            try:
                if _file_identity(old) == old_identity:
                    old.unlink()
            except FileNotFoundError:
                pass
        if self._on_checkpoint is not None:
            self._on_checkpoint(info)

    def save(self, path: str | Path | None = None,
             include_replay: bool = False) -> CheckpointInfo:
        """
        Write a checkpoint of the current state and return what was written.

        ``path`` None writes ``<checkpoint_dir>/td3_step_<total_it>.pth`` with the total_it of
        the saved state. Without the replay buffer the state is snapshotted under the model lock
        and written by the writer thread (updates go on). With it, updates and inserts pause for
        the write so that networks, counters and buffer are one exactly resumable state.
        """
        # Every write goes through the one writer thread, queued under the model lock, so
        # writes to one name land in the order of the states they hold.
        with self._model_lock:
            if path is None:
                path = step_checkpoint_path(self.options.checkpoint_dir, self.td3.total_it)
            if include_replay:
                with self._replay_lock:
                    return self._writer.submit(
                        save_checkpoint, Path(path), self.td3, self.replay,
                        self._counters_locked(with_replay=True)).result()
            state, counters = self._snapshot_locked()
            future = self._writer.submit(self._write_snapshot, state, counters, Path(path))
        return future.result()[0]

    def load(self, path: str | Path, weights_only: bool = False) -> CheckpointInfo:
        """
        Load a checkpoint between two updates and broadcast the loaded weights.

        load_checkpoint validates everything before it touches the learner, so on any error
        (CheckpointError) networks, buffer and counters are exactly as they were. A full load
        restores the counters, and the replay buffer when one was saved beside the file.
        """
        with self._model_lock:
            if weights_only:
                info, _ = load_checkpoint(path, self.td3, None, weights_only=True)
            else:
                with self._replay_lock:
                    info, counters = load_checkpoint(path, self.td3, self.replay)
                    self._transitions = int(counters.get('env_steps', self._transitions))
                    self._episodes = int(counters.get('episodes', self._episodes))
                    self._version = max(self._version, int(counters.get('weights_version', 0)))
                    if counters.get('replay_inserts') == self.replay.inserts:  # buffer restored
                        self._buffer_updates = int(counters['buffer_updates'])
                    self._blocked = False
            export = self._export_locked()
        if self._on_weights is not None:
            self._on_weights(export)
        return info

    # ----------------------------------------------------------------------------- stats
    def stats(self) -> LearnerStats:
        """Return a consistent picture of the learner's progress (no model lock needed)."""
        metrics = self._metrics
        with self._replay_lock:
            return LearnerStats(
                total_it=int(self.td3.total_it), transitions=self._transitions,
                buffer_size=len(self.replay), episodes=self._episodes,
                weights_version=self._version, updates_per_s=self._rate.rate(),
                critic_loss=metrics.get('critic_loss', math.nan),
                actor_loss=metrics.get('actor_loss', math.nan),
                q_mean=metrics.get('q_mean', math.nan),
                samples_per_insert=(self.config.samples_per_insert
                                    if self.options.mode == 'synchronous' else 0.0),
                insert_allowance=self._allowance_locked(),
                actors={name: replace(tally) for name, tally in self._actors.items()})


def _file_identity(path: Path) -> tuple[int, int]:
    """Return (inode, mtime_ns): tells the file a write put there from a later replacement."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


FLOAT32_MAX = float(np.finfo(np.float32).max)
ACTION_TOLERANCE = 1e-5   # float32 rounding of a clipped action (float32(0.3) > 0.3)


def _check_action_and_reward(action: Any, reward: Any, action_dim: int,
                             max_action: float) -> None:
    """Refuse what the buffer would store wrongly: out-of-range actions, float32-inf rewards."""
    try:
        values = np.asarray(action, dtype=np.float64).reshape(-1)
        reward = float(reward)
    except (TypeError, ValueError) as exc:
        raise ValueError(f'action or reward is not numeric: {exc}') from None
    if values.size != action_dim:
        raise ValueError(f'action must have {action_dim} values, got {values.size}')
    if not np.isfinite(values).all():
        raise ValueError('action contains NaN or inf')
    limit = max_action * (1.0 + ACTION_TOLERANCE)
    if np.abs(values).max(initial=0.0) > limit:
        raise ValueError(f'action {values.tolist()} is outside [-{max_action:g}, '
                         f'{max_action:g}] (max_action)')
    if not abs(reward) <= FLOAT32_MAX:   # also NaN; a larger one would be stored as inf
        raise ValueError(f'reward must be finite in float32, got {reward}')


def _frames(name: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    """View frames (a message's flat uint8[], bytes or an array) as uint8 of ``shape``."""
    if isinstance(value, np.ndarray):
        array = value
    else:
        try:
            array = np.frombuffer(value, dtype=np.uint8)
        except TypeError:  # a plain list
            array = np.asarray(value, dtype=np.uint8)
    if array.dtype != np.uint8 or array.size != math.prod(shape):
        raise ValueError(f'{name} must be {math.prod(shape)} uint8 values '
                         f'({"x".join(map(str, shape))}), got {array.size} {array.dtype}')
    return array.reshape(shape)


class TensorBoardLog:
    """The learner stats as TensorBoard scalars (SummaryWriter), step = total_it."""

    def __init__(self, log_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # slow import: only when used
        self._writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, stats: LearnerStats) -> None:
        step = stats.total_it
        for key in ('critic_loss', 'actor_loss', 'q_mean'):
            value = getattr(stats, key)
            if math.isfinite(value):
                self._writer.add_scalar(f'loss/{key}' if 'loss' in key else f'value/{key}',
                                        value, step)
        self._writer.add_scalar('speed/updates_per_s', stats.updates_per_s, step)
        self._writer.add_scalar('data/buffer_size', stats.buffer_size, step)
        self._writer.add_scalar('data/transitions', stats.transitions, step)
        self._writer.add_scalar('data/episodes', stats.episodes, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
