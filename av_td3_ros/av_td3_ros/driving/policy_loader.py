"""
The policy node's loader: checkpoints and broadcast weights read and built off the frame path.

Reading a checkpoint and building its networks (or hashing and building broadcast weights)
takes far longer than a camera period, so it runs on one worker thread (loads are built one
at a time). The result is *staged* under a lock and taken by the actor between two frames
(``take``). Each configuration of the node opens a *generation* (``begin``); a load that ends
after the node was cleaned up or reconfigured belongs to a past generation and is refused when
it is staged, so a policy of an earlier configuration is never swapped in. No rclpy.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
import os
import threading

from av_td3_ros.driving.actor_core import review_weights
from av_td3_ros.driving.policy import Policy
from av_td3_ros.formats.checkpoint import CheckpointError, find_checkpoint


@dataclass(frozen=True, eq=False)
class Generation:
    """One configuration's checkpoint settings; compared by identity."""

    checkpoint_dir: str
    allowed_dirs: tuple[str, ...]
    device: str


@dataclass
class StagedPolicy:
    """A built policy waiting to be swapped in between frames, and where it came from."""

    policy: Policy
    version: int
    source: str
    total_it: int
    sha256: str


def build_policy(path, device: str) -> StagedPolicy:
    """Load a checkpoint or policy export file and describe it (the worker's slow part)."""
    policy = Policy.load(path, device=device)
    policy.prepare()           # the warm-up, here and not on a frame
    return StagedPolicy(policy, policy.version, str(path), policy.version, policy.sha256)


class PolicyLoader:
    """One worker thread, the staged policy and the weights in use, per node."""

    def __init__(self) -> None:
        self._lock = threading.Lock()          # guards everything below
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix='policy_loader')
        self._generation: Generation | None = None
        self._staged: StagedPolicy | None = None
        self._weights: tuple[int, str] | None = None   # (version, sha256) of broadcast weights

    # -- generations ------------------------------------------------------------------------

    def begin(self, checkpoint_dir: str, allowed_dirs, device: str) -> Generation:
        """Start a configuration: nothing staged, no broadcast weights in use."""
        generation = Generation(checkpoint_dir, tuple(allowed_dirs), device)
        with self._lock:
            self._generation, self._staged, self._weights = generation, None, None
        return generation

    def close(self) -> None:
        """End the configuration: loads still running are refused when they finish."""
        with self._lock:
            self._generation, self._staged = None, None

    @property
    def generation(self) -> Generation | None:
        with self._lock:
            return self._generation

    @property
    def weights_in_use(self) -> tuple[int, str] | None:
        with self._lock:
            return self._weights

    def shutdown(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    # -- work -------------------------------------------------------------------------------

    def submit(self, function, *args) -> Future:
        """Run ``function(*args)`` on the worker thread."""
        return self._worker.submit(function, *args)

    def initial_path(self, generation: Generation, checkpoint_path: str) -> str:
        """Return checkpoint_path (trusted configuration) resolved against checkpoint_dir."""
        if os.path.isabs(checkpoint_path):
            return checkpoint_path
        return os.path.join(generation.checkpoint_dir, checkpoint_path)

    def read_checkpoint(self, requested: str, generation: Generation) -> StagedPolicy:
        """
        Resolve a service request's path (empty: the newest checkpoint) and build its policy.

        Raises CheckpointError for a path outside the allowed directories or an unreadable file.
        """
        path = find_checkpoint(requested, generation.checkpoint_dir, generation.allowed_dirs)
        return build_policy(path, generation.device)

    def review_weights(self, fmt: str, data: bytes, sha256: str, version: int, total_it: int,
                       source: str, generation: Generation
                       ) -> tuple[str, StagedPolicy | None]:
        """Review broadcast weights and build them: (why, staged policy or None if refused)."""
        accept, why = review_weights(fmt, data, sha256, version, self.weights_in_use)
        if not accept:
            return why, None
        policy = Policy.from_export_bytes(bytes(data), device=generation.device)
        policy.prepare()
        return why, StagedPolicy(policy, int(version), f'{source} ({why})', int(total_it),
                                 sha256.lower())

    def serve_request(self, requested: str, generation: Generation) -> tuple[bool, str, object]:
        """
        Do a ``~/load_checkpoint`` request on the worker: (success, message, staged or None).

        Any failure leaves the running policy as it is; so does a load that ends after its
        generation did (the node was cleaned up or reconfigured while it read).
        """
        try:
            staged = self.read_checkpoint(requested, generation)
        except CheckpointError as exc:
            return False, f'refused: {exc}', None
        except Exception as exc:  # report in words, keep the old weights
            return False, f'refused: {requested!r} could not be loaded: {exc}', None
        if not self.stage(staged, generation):
            return False, (f'refused: the node was cleaned up or reconfigured while '
                           f'{requested!r} was read; nothing changed'), None
        return True, (f'loaded {staged.source} (total_it {staged.total_it}); in use from the '
                      'next camera frame'), staged

    def take_weights(self, fmt: str, data: bytes, sha256: str, version: int, total_it: int,
                     source: str, generation: Generation) -> tuple[str, str]:
        """
        Review, build and stage broadcast weights on the worker: (outcome, why).

        The outcome is ``staged``, ``in use`` (the transient-local topic redelivers the weights
        in use), ``refused`` (bad format or digest) or ``stale`` (the generation ended while
        they were built). Raises what building bad bytes raises.
        """
        why, staged = self.review_weights(fmt, data, sha256, version, total_it, source,
                                          generation)
        if staged is None:
            return ('in use' if 'already in use' in why else 'refused'), why
        if not self.stage(staged, generation, weights=(int(version), sha256.lower())):
            return 'stale', 'the node was cleaned up or reconfigured while they were built'
        return 'staged', why

    # -- staging ----------------------------------------------------------------------------

    def stage(self, staged: StagedPolicy, generation: Generation,
              weights: tuple[int, str] | None = None) -> bool:
        """Stage a built policy unless its generation has ended; say whether it was staged."""
        with self._lock:
            if generation is not self._generation:
                return False
            self._staged = staged
            if weights is not None:
                self._weights = weights
            return True

    def take(self) -> StagedPolicy | None:
        """Return the staged policy, if any, and unstage it (call between two frames)."""
        with self._lock:
            staged, self._staged = self._staged, None
            return staged
