"""
The actor's logic, free of ROS: what the policy node does with each message, as plain calls.

The policy node (ros/policy_node.py) is glue around :class:`ActorCore`; the bag tools replay
recorded camera/odometry through the same object, so a bag replay and a live vehicle see one
observation path (``driving/observation.py``), one episode/feedback pairing and one action mapping.

Pairing (DESIGN §4): the simulator stamps each StepFeedback with the camera frame it belongs to.
Frame *t* (image + pose) and its feedback are joined by stamp; a transition (s_t, a_t, r, s_t+1)
is made when frames *t* and *t+1* of one episode both have their image, pose, feedback and *t*
its executed action. The stack of s_t is rebuilt from the recorded frames of that episode, so it
is exact even when a step-0 feedback arrived after its image; a frame whose image or feedback
never arrived breaks the chain (no transition across a gap).
"""

from __future__ import annotations

from collections import deque, OrderedDict
from dataclasses import dataclass
import hashlib
import itertools
import math
import time
from typing import NamedTuple, Protocol

from av_td3_ros.driving.observation import (
    build_vector, FrameStack, image_to_gray, ObservationError, ObservationSpec, Route,
    wrap_angle, yaw_from_quaternion)
from av_td3_ros.learning.config import linear_schedule
import numpy as np

# Full brake, wheels straight: what the actor sends whenever it must not drive.
BRAKE_ACTION = np.array([0.0, -1.0], dtype=np.float32)
NO_POLICY_REASON = ('no checkpoint loaded (deploy mode): set checkpoint_path or call '
                    '~/load_checkpoint')


class PolicyLike(Protocol):
    """What the actor needs from a policy (``policy.Policy`` satisfies it)."""

    spec: ObservationSpec

    def act(self, image: np.ndarray, vector: np.ndarray) -> np.ndarray:
        ...


class Pose(NamedTuple):
    """Planar pose and speed of the ego vehicle (REP-103 world frame)."""

    x: float
    y: float
    yaw: float
    speed: float


# Odometry beyond these is a broken message, not a pose: refused before it reaches the vector
# (1e30 m would overflow the float32 observation to inf and the policy's action to NaN).
MAX_ODOMETRY_POSITION_M = 1e8
MAX_ODOMETRY_SPEED_MPS = 1e3
MAX_QUATERNION_COMPONENT = 1e3   # unnormalised is fine; 1e200 overflows the yaw to NaN


def pose_from_odometry(position: tuple[float, float, float],
                       orientation: tuple[float, float, float, float],
                       linear_velocity: tuple[float, float, float]) -> Pose:
    """
    Build a Pose from nav_msgs/Odometry values (position, quaternion xyzw, twist.linear).

    Speed is twist.linear.x: the forward speed, the twist being in the vehicle (child) frame as
    REP-105 and carla-ros-bridge have it; the embedded simulator's gym env uses the same value.
    Raises ObservationError for NaN/inf values, a zero or absurd quaternion, and positions or
    speeds beyond MAX_ODOMETRY_POSITION_M / MAX_ODOMETRY_SPEED_MPS.
    """
    values = (*position, *orientation, *linear_velocity)
    if not all(math.isfinite(v) for v in values):
        raise ObservationError(f'odometry contains NaN or inf: {values}')
    if max(abs(v) for v in position) > MAX_ODOMETRY_POSITION_M:
        raise ObservationError(f'odometry position {tuple(position)} is beyond '
                               f'{MAX_ODOMETRY_POSITION_M:g} m')
    if max(abs(v) for v in linear_velocity) > MAX_ODOMETRY_SPEED_MPS:
        raise ObservationError(f'odometry velocity {tuple(linear_velocity)} is beyond '
                               f'{MAX_ODOMETRY_SPEED_MPS:g} m/s')
    qx, qy, qz, qw = orientation
    if max(abs(v) for v in orientation) > MAX_QUATERNION_COMPONENT:
        raise ObservationError(f'odometry orientation {tuple(orientation)} is not a rotation '
                               f'quaternion')
    if qx * qx + qy * qy + qz * qz + qw * qw < 1e-12:
        raise ObservationError('odometry orientation is a zero quaternion')
    return Pose(float(position[0]), float(position[1]), yaw_from_quaternion(qx, qy, qz, qw),
                float(linear_velocity[0]))


def route_from_points(points: list[tuple[float, float]] | np.ndarray) -> Route:
    """Route of a nav_msgs/Path's (x, y) points; raises ObservationError when unusable."""
    xy = np.asarray(points, dtype=np.float64).reshape(-1, 2) if len(points) else np.zeros((0, 2))
    return Route(xy)


class OdometryBuffer:
    """
    Recent poses by stamp, so that each image is paired with the pose of the same instant.

    A synchronous simulator (the embedded one, CARLA in synchronous mode) stamps the camera
    frame and the odometry of one tick alike; the two arrive in either order over DDS. Pairing
    by stamp keeps the observation exact instead of one tick stale.
    """

    def __init__(self, size: int = 32) -> None:
        self._poses: OrderedDict[int, Pose] = OrderedDict()
        self._size = size

    def add(self, stamp: int, pose: Pose) -> None:
        self._poses[stamp] = pose
        self._poses.move_to_end(stamp)
        while len(self._poses) > self._size:
            self._poses.popitem(last=False)

    def clear(self) -> None:
        self._poses.clear()

    @property
    def latest(self) -> Pose | None:
        return next(reversed(self._poses.values())) if self._poses else None

    def nearest(self, stamp: int) -> Pose | None:
        """Return the pose whose stamp is closest to ``stamp`` (None when empty)."""
        if not self._poses:
            return None
        best = min(self._poses, key=lambda s: abs(s - stamp))
        return self._poses[best]

    def match(self, stamp: int) -> Pose | None:
        """
        Return the pose for ``stamp`` under stamp pairing, or None to wait for it.

        The pose of this very stamp when present; otherwise the pose with the nearest stamp as
        soon as it is known to be the nearest: once a later pose has arrived (the one of this
        stamp was never published, got lost, or the odometry runs at another rate or phase than
        the camera), or when the newest earlier pose is less than half the odometry's shortest
        recent interval before ``stamp`` (no pose still to come can be nearer, so an odometry
        stamped slightly before its camera frame is not kept waiting for the next one).
        """
        pose = self._poses.get(stamp)
        if pose is not None:
            return pose
        if not self._poses:
            return None
        newest = max(self._poses)
        if newest > stamp:
            return self.nearest(stamp)
        interval = self.min_interval()
        if interval is not None and 2 * (stamp - newest) < interval:
            return self._poses[newest]
        return None

    def min_interval(self) -> int | None:
        """Return the shortest interval between the buffered stamps (None: fewer than two)."""
        stamps = sorted(self._poses)
        gaps = [b - a for a, b in itertools.pairwise(stamps) if b > a]
        return min(gaps) if gaps else None


# -- route changes ------------------------------------------------------------------------------

# A route continues the current one when it joins it within a lane width, runs the same way and
# the vehicle is on it (DESIGN §5 terminates an episode at 2.5 m lateral deviation).
ROUTE_JOIN_M = 3.5
ON_ROUTE_M = 3.5


class RouteChange(NamedTuple):
    """What a route message means: a continuation of the current task or a new one."""

    new_task: bool
    reason: str


def _to_polyline(xy: np.ndarray, x: float, y: float) -> tuple[float, float]:
    """Return (distance, heading of the nearest segment) from the point to the polyline."""
    a, seg = xy[:-1], np.diff(xy, axis=0)
    length2 = np.maximum((seg ** 2).sum(axis=1), 1e-18)
    t = np.clip(((x - a[:, 0]) * seg[:, 0] + (y - a[:, 1]) * seg[:, 1]) / length2, 0.0, 1.0)
    d2 = (a[:, 0] + t * seg[:, 0] - x) ** 2 + (a[:, 1] + t * seg[:, 1] - y) ** 2
    best = int(np.argmin(d2))
    return math.sqrt(float(d2[best])), math.atan2(seg[best, 1], seg[best, 0])


def _start_heading(xy: np.ndarray) -> float:
    seg = np.diff(xy, axis=0)
    moving = np.flatnonzero(np.hypot(seg[:, 0], seg[:, 1]) > 1e-6)
    first = seg[moving[0]] if len(moving) else seg[0]
    return math.atan2(first[1], first[0])


def classify_route(current: Route | None, new: Route, pose: Pose | None) -> RouteChange:
    """
    Decide whether ``new`` continues the route in use or starts a new task.

    Planners re-publish their route (the same plan, or one refreshed from where the vehicle
    is, each with a new stamp); that must not restart the frame stack. ``new`` continues
    ``current`` when the waypoints are the same, or when all of these hold: its start lies
    within ``ROUTE_JOIN_M`` of the current route (or the current start within that of it:
    the route was extended backwards), it runs the same way there (headings within 90°), and
    the vehicle's latest pose, when one is known, lies within ``ON_ROUTE_M`` of it. Anything
    else (the first route, a route elsewhere, a jump of its start, a reversed route, a route
    the vehicle is not on) is a new task.
    """
    if current is None:
        return RouteChange(True, 'first route')
    if current.xy.shape == new.xy.shape and np.array_equal(current.xy, new.xy):
        return RouteChange(False, 'the same route again')
    start_gap, old_heading = _to_polyline(current.xy, *new.xy[0])
    back_gap, new_heading = _to_polyline(new.xy, *current.xy[0])
    if min(start_gap, back_gap) > ROUTE_JOIN_M:
        return RouteChange(True, f'its start is {start_gap:.1f} m from the current route')
    if start_gap <= ROUTE_JOIN_M:     # it starts on the current route (refreshed, pruned)
        turn = wrap_angle(_start_heading(new.xy) - old_heading)
    else:                             # the current route starts on it (extended backwards)
        turn = wrap_angle(_start_heading(current.xy) - new_heading)
    if abs(turn) > math.pi / 2:
        return RouteChange(True, f'it runs {math.degrees(abs(turn)):.0f} degrees against '
                                 'the current route')
    if pose is not None:
        off, _ = _to_polyline(new.xy, pose.x, pose.y)
        if off > ON_ROUTE_M:
            return RouteChange(True, f'the vehicle is {off:.1f} m from it')
    return RouteChange(False, 'it continues the current route')


@dataclass(frozen=True)
class Feedback:
    """The StepFeedback fields the actor uses (stamp = the camera frame it belongs to)."""

    stamp: int
    episode_id: int
    step: int
    reward: float
    terminated: bool
    truncated: bool


@dataclass
class TransitionData:
    """One transition, field for field as av_td3_interfaces/msg/Transition."""

    stamp: int                 # camera stamp of s'
    episode_id: int
    step: int                  # index of s in its episode
    policy_version: int
    obs_frames: np.ndarray     # (frame_stack, H, W) uint8, oldest first
    obs_vector: np.ndarray     # float32
    action: np.ndarray         # float32 (2,), as executed
    reward: float
    next_frame: np.ndarray     # (H, W) uint8
    next_vector: np.ndarray    # float32
    terminated: bool
    truncated: bool


@dataclass
class StepResult:
    """What the actor decided for one camera frame."""

    action: np.ndarray         # executed action, float32 (2,)
    brake_reason: str | None   # why it holds the vehicle instead of driving (None: driving)
    policy_version: int
    inference_s: float         # time spent in the network (0 when it did not run)
    transitions: list[TransitionData]


@dataclass
class _Frame:
    """One camera frame as the actor saw it, kept until it can no longer be in a transition."""

    stamp: int
    gray: np.ndarray | None = None
    vector: np.ndarray | None = None       # None: no exact vector (no route or stale pose)
    action: np.ndarray | None = None       # set once the control was sent
    policy_version: int = 0
    feedback: Feedback | None = None
    emitted: bool = False                  # the transition *from* this frame was made

    @property
    def complete(self) -> bool:
        return self.gray is not None and self.vector is not None and self.feedback is not None


class ActorCore:
    """
    One actor: frames in, actions (and, in train mode, transitions) out.

    Single-threaded by design: the node calls it from one callback group. Swapping the policy
    (``set_policy``) is the caller's job to do between two frames.
    """

    def __init__(self, spec: ObservationSpec | None = None, *, train: bool = False,
                 exploration_noise: float = 0.1, max_action: float = 1.0,
                 seed: int | None = None, history: int = 64,
                 stamp_gap_reset_ns: int = 500_000_000,
                 exploration_noise_final: float | None = None,
                 exploration_noise_decay_steps: int = 0) -> None:
        if exploration_noise < 0 or (exploration_noise_final or 0.0) < 0:
            raise ValueError(f'exploration noise must be >= 0, got {exploration_noise}, '
                             f'{exploration_noise_final}')
        if exploration_noise_decay_steps < 0:
            raise ValueError(f'exploration_noise_decay_steps must be >= 0, got '
                             f'{exploration_noise_decay_steps}')
        self.train = train
        self.exploration_noise = exploration_noise
        # linear decay (DrQ-v2) over this actor's policy-driven train steps; 0 = constant
        self.exploration_noise_final = (exploration_noise if exploration_noise_final is None
                                        else exploration_noise_final)
        self.exploration_noise_decay_steps = int(exploration_noise_decay_steps)
        self.explore_steps = 0
        self.max_action = max_action
        self._rng = np.random.default_rng(seed)
        self._history = history
        self._stamp_gap_reset_ns = stamp_gap_reset_ns
        self._policy: PolicyLike | None = None
        self.policy_version = 0
        self.route: Route | None = None
        self._run = 0                                  # restarts of the source seen so far
        self._seen: dict[str, tuple[int, int]] = {}    # input -> (last stamp, run)
        self._set_spec(spec or ObservationSpec())

    # -- configuration ------------------------------------------------------------------------

    def exploration_std(self) -> float:
        """Exploration noise std (times max_action) for this actor's next policy action."""
        return linear_schedule(self.exploration_noise, self.exploration_noise_final,
                               self.exploration_noise_decay_steps, self.explore_steps)

    def _set_spec(self, spec: ObservationSpec) -> None:
        """Adopt an observation spec; a new frame shape starts a new stack, any change a chain."""
        old = getattr(self, 'spec', None)
        self.spec = spec
        if old is None or ((old.frame_stack, old.image_size) !=
                           (spec.frame_stack, spec.image_size)):
            self._stack = FrameStack(spec.frame_stack, spec.image_size)
            self._pushed: deque[tuple[int, np.ndarray]] = deque(maxlen=spec.frame_stack)
            self._last_stamp: int | None = None
        self._frames: OrderedDict[int, _Frame] = OrderedDict()
        self._by_step: dict[tuple[int, int], _Frame] = {}
        self._episode_starts: deque[int] = deque(maxlen=8)

    @property
    def policy(self) -> PolicyLike | None:
        return self._policy

    def set_policy(self, policy: PolicyLike | None, version: int) -> None:
        """
        Use ``policy`` from the next frame on.

        A policy with another observation spec (e.g. a legacy 23-dim checkpoint) switches the
        observation: no transition spans the change, and a new frame shape starts a new stack
        (the image scaling lives in the network, so the uint8 stack is kept when only it differs).
        """
        self._policy = policy
        self.policy_version = version
        if policy is not None and policy.spec != self.spec:
            self._set_spec(policy.spec)

    def set_route(self, route: Route, pose: Pose | None = None) -> RouteChange:
        """
        Follow ``route``; a new task (``classify_route``) starts a new frame stack.

        ``pose`` is the vehicle's latest pose (None: unknown). A route that continues the
        current one (a planner re-publishing or refreshing its plan) keeps the stack.
        """
        change = classify_route(self.route, route, pose)
        self.route = route
        if change.new_task:
            self._reset_stack()
        return change

    # -- inputs -------------------------------------------------------------------------------

    def add_feedback(self, feedback: Feedback) -> list[TransitionData]:
        """Record a frame's StepFeedback; return the transitions it completes (train mode)."""
        self._note_stamp('feedback', feedback.stamp)
        if feedback.step == 0:
            self._start_episode_at(feedback.stamp)
        if not self.train:
            return []
        frame = self._frame(feedback.stamp)
        frame.feedback = feedback
        self._by_step[(feedback.episode_id, feedback.step)] = frame
        return self._complete(frame)

    def frame_gray(self, data, width: int, height: int, encoding: str, step: int = 0
                   ) -> np.ndarray:
        """Gray frame of a raw image at this actor's spec (raises ObservationError)."""
        return image_to_gray(data, width, height, encoding, step, self.spec.image_size)

    def step(self, stamp: int, gray: np.ndarray, pose: Pose | None,
             brake_reason: str | None = None) -> StepResult:
        """
        Act on one camera frame (gray ``spec.image_size`` square, uint8).

        ``pose`` is the ego pose paired with the frame (None: none usable); ``brake_reason``
        lets the caller force a full brake (stale input). The actor also brakes, saying why,
        without a route, without a pose, and in deploy mode without a policy. In train mode
        without a policy yet it explores with uniform random actions (TD3's warm-up).
        """
        self._note_stamp('image', stamp)
        stack = self._push(stamp, gray)
        vector = None
        if brake_reason is None and self.route is None:
            brake_reason = 'no route yet: no waypoints (nav_msgs/Path) received'
        if brake_reason is None and pose is None:
            brake_reason = 'no odometry for this frame'
        if brake_reason is None:
            try:
                vector, _ = build_vector(self.route, pose.x, pose.y, pose.yaw, pose.speed,
                                         self.spec)
            except ObservationError as exc:
                brake_reason = f'no usable observation: {exc}'
        if brake_reason is None and self._policy is None and not self.train:
            brake_reason = NO_POLICY_REASON
        inference_s = 0.0
        if brake_reason is not None:
            action = BRAKE_ACTION.copy()
        elif self._policy is None:
            action = self._rng.uniform(-self.max_action, self.max_action, 2).astype(np.float32)
        else:
            start = time.perf_counter()
            action = np.asarray(self._policy.act(stack, vector), dtype=np.float32).reshape(2)
            inference_s = time.perf_counter() - start
            if not np.isfinite(action).all():   # never send NaN to a vehicle
                brake_reason = f'the policy returned a non-finite action {action.tolist()}'
                action = BRAKE_ACTION.copy()
            elif self.train:
                std = self.exploration_std()
                self.explore_steps += 1
                if std > 0:
                    noise = self._rng.normal(0.0, std * self.max_action, 2)
                    action = np.clip(action + noise, -self.max_action, self.max_action
                                     ).astype(np.float32)
        transitions: list[TransitionData] = []
        if self.train:
            frame = self._frame(stamp)
            frame.gray = gray
            frame.vector = vector
            frame.action = action
            frame.policy_version = self.policy_version
            transitions = self._complete(frame)
        return StepResult(action, brake_reason, self.policy_version, inference_s, transitions)

    def withdraw_action(self, stamp: int) -> None:
        """Forget the action of a frame whose control was never sent (superseded while held)."""
        frame = self._frames.get(stamp)
        if frame is not None:
            frame.action = None

    def _note_stamp(self, source: str, stamp: int) -> None:
        """
        Forget the recorded frames when the stamps of an input jump back (a restarted source).

        A restarted simulator stamps from its epoch again and counts episodes from 0, so its
        frames would find the old run's frames under their stamps and (episode, step) keys.
        Whichever input sees the jump first starts the new run; the other one then follows.
        """
        last, run = self._seen.get(source, (None, self._run))
        if stamp and last is not None and stamp < last and run == self._run:
            self._run += 1
            self._frames.clear()
            self._by_step.clear()
            self._episode_starts.clear()
        self._seen[source] = (stamp, self._run)

    # -- frame stack --------------------------------------------------------------------------

    def _reset_stack(self) -> None:
        self._stack.reset()
        self._pushed.clear()

    def _push(self, stamp: int, gray: np.ndarray) -> np.ndarray:
        """
        Push a frame on the live stack.

        A new stack starts at a known episode start and when the stamps jump back (a restarted
        simulator) or forward by more than the gap limit (the old frames are stale). A frame with
        the stamp of the last one is the same frame re-published and is not stacked twice.
        """
        last = self._last_stamp
        if stamp and stamp == last:            # the same frame again (a re-published one)
            return self._stack.stack
        if (stamp in self._episode_starts or
                (last is not None and not 0 <= stamp - last <= self._stamp_gap_reset_ns)):
            self._reset_stack()
        self._last_stamp = stamp
        self._pushed.append((stamp, gray))
        return self._stack.push(gray)

    def _start_episode_at(self, stamp: int) -> None:
        """Start the live stack at ``stamp``, re-pushing if that frame was already stacked."""
        self._episode_starts.append(stamp)
        pushed = list(self._pushed)
        for i, (pushed_stamp, _) in enumerate(pushed):
            if pushed_stamp == stamp:
                self._reset_stack()
                for later_stamp, gray in pushed[i:]:
                    self._pushed.append((later_stamp, gray))
                    self._stack.push(gray)
                return

    # -- transitions --------------------------------------------------------------------------

    def _frame(self, stamp: int) -> _Frame:
        frame = self._frames.get(stamp)
        if frame is None:
            frame = self._frames[stamp] = _Frame(stamp)
            while len(self._frames) > self._history:
                _, old = self._frames.popitem(last=False)
                if old.feedback is not None:
                    key = (old.feedback.episode_id, old.feedback.step)
                    if self._by_step.get(key) is old:
                        del self._by_step[key]
        return frame

    def _exact_stack(self, frame: _Frame) -> np.ndarray | None:
        """Stack of ``frame`` from its episode's recorded frames; None across a gap."""
        n = self.spec.frame_stack
        stack = np.zeros(self.spec.image_shape, dtype=np.uint8)
        episode, step = frame.feedback.episode_id, frame.feedback.step
        for back in range(min(n, step + 1)):
            earlier = self._by_step.get((episode, step - back))
            if earlier is None or earlier.gray is None:
                return None
            stack[n - 1 - back] = earlier.gray
        return stack

    def _complete(self, frame: _Frame) -> list[TransitionData]:
        """Make the transitions into and out of ``frame`` that have just become possible."""
        if not frame.complete:
            return []
        episode, step = frame.feedback.episode_id, frame.feedback.step
        out = []
        for before, after in ((self._by_step.get((episode, step - 1)), frame),
                              (frame, self._by_step.get((episode, step + 1)))):
            if (before is None or after is None or before.emitted or not before.complete or
                    not after.complete or before.action is None or
                    before.feedback.terminated or before.feedback.truncated):
                continue
            obs_frames = self._exact_stack(before)
            if obs_frames is None:
                continue
            before.emitted = True
            out.append(TransitionData(
                stamp=after.stamp, episode_id=episode, step=before.feedback.step,
                policy_version=before.policy_version, obs_frames=obs_frames,
                obs_vector=before.vector, action=before.action,
                reward=after.feedback.reward, next_frame=after.gray,
                next_vector=after.vector, terminated=after.feedback.terminated,
                truncated=after.feedback.truncated))
        return out


# -- control outputs, watchdog, rate limit, weights: small decisions the node must get right -----

# carla_twist_to_control divides linear.x by its MAX_LON_ACCELERATION (10) to get the throttle.
TWIST_FULL_THROTTLE = 10.0


def twist_from_control(steer: float, throttle: float, brake: float,
                       max_steer_angle: float) -> tuple[float, float]:
    """
    Return the (linear.x, angular.z) that carla_twist_to_control turns back into this control.

    That node maps linear.x / 10 to throttle and -angular.z / max_steer_angle to steer, and only
    the all-zero Twist to a brake (full brake; it has no partial brake). So any braking (or a
    zero throttle, which it would read as reverse) becomes the zero Twist.
    """
    if brake > 0.0 or throttle <= 0.0:
        return 0.0, 0.0
    return throttle * TWIST_FULL_THROTTLE, -steer * max_steer_angle


def stale_input_reason(now: float, last_image: float | None, last_odometry: float | None,
                       timeout: float) -> str | None:
    """
    Say why input is stale (no image / odometry within ``timeout`` s), or None if fresh.

    The reason carries no elapsed time, so that it stays the same while the input stays stale
    (the node logs each change of reason once).
    """
    for name, last in (('camera image', last_image), ('odometry', last_odometry)):
        if last is None:
            return f'no {name} received yet'
        if now - last > timeout:
            return f'no {name} within input_timeout ({timeout:g} s)'
    return None


class InsertBudget:
    """
    The learner's rate limit as seen by one actor (DESIGN §6, TrainerStats.insert_allowance).

    After each stats message, the actor may publish ``insert_allowance`` more transitions
    before it must hold its control (which makes a synchronous simulator wait); fresh stats
    renew the budget. A negative allowance, or no stats at all, means unlimited.
    """

    def __init__(self) -> None:
        self.published = 0
        self._published_at_stats = 0
        self.allowance: int | None = None

    def on_published(self, n: int = 1) -> None:
        self.published += n

    def on_stats(self, insert_allowance: int) -> None:
        self.allowance = int(insert_allowance)
        self._published_at_stats = self.published

    @property
    def since_stats(self) -> int:
        return self.published - self._published_at_stats

    @property
    def must_hold(self) -> bool:
        return (self.allowance is not None and self.allowance >= 0 and
                self.since_stats >= self.allowance)


def review_weights(fmt: str, data: bytes, sha256: str, version: int,
                   current: tuple[int, str] | None) -> tuple[bool, str]:
    """
    Decide whether to take a PolicyWeights message; return (accept, reason in words).

    Refused: a format other than safetensors, a digest that does not match the bytes, and the
    weights already in use (the transient-local topic redelivers them on reconnection).
    """
    if fmt != 'safetensors':
        return False, f'weights format {fmt!r} is not supported (only safetensors)'
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256.lower():
        return False, (f'weights version {version}: sha256 mismatch (message says {sha256[:12]}, '
                       f'data is {digest[:12]}); corrupted or truncated')
    if current is not None and current == (version, digest):
        return False, f'weights version {version} already in use'
    if current is not None and version < current[0]:
        return True, (f'weights version {version} is older than {current[0]} '
                      '(learner restarted?); taking it')
    return True, f'weights version {version}'


class RollingStats:
    """Percentiles and rate over a sliding window, for /diagnostics."""

    def __init__(self, size: int = 1000) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._times: deque[float] = deque(maxlen=size)

    def add(self, now: float, value: float = 0.0) -> None:
        self._times.append(now)
        self._values.append(value)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self._values, q)) if self._values else math.nan

    def rate(self, now: float, window: float = 5.0) -> float:
        """Events per second over the last ``window`` seconds."""
        recent = sum(1 for t in self._times if now - t <= window)
        return recent / window
