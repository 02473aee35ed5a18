"""
The observation of DESIGN §5, built the same way by every backend.

Camera image -> grayscale 84x84 (OpenCV's ITU-R 601 luma, area resize) -> 4-frame stack, and the
ego/route vector ``[v/30, lateral/3.5, heading/pi, 25 x (x, y)/50]``. The gym env, the policy node,
the bag tools and the CARLA path all call these functions, so a policy sees one observation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import math

import cv2
import numpy as np

IMAGE_SCALINGS = ('zero_one', 'minus_one_one')

# encoding -> (channels, OpenCV conversion to gray; None = already gray)
SUPPORTED_ENCODINGS = {
    'bgra8': (4, cv2.COLOR_BGRA2GRAY),
    'rgba8': (4, cv2.COLOR_RGBA2GRAY),
    'bgr8': (3, cv2.COLOR_BGR2GRAY),
    'rgb8': (3, cv2.COLOR_RGB2GRAY),
    'mono8': (1, None),
}


class ObservationError(ValueError):
    """Input that cannot become an observation (unknown encoding, wrong size, NaN pose)."""


@dataclass(frozen=True)
class ObservationSpec:
    """Shape and scaling of the observation; stored in every checkpoint and policy export."""

    frame_stack: int = 4
    image_size: int = 84
    n_waypoints: int = 25
    waypoint_spacing_m: float = 2.0
    image_scaling: str = 'zero_one'
    speed_scale: float = 30.0
    lateral_scale: float = 3.5
    waypoint_scale: float = 50.0

    def __post_init__(self) -> None:
        if self.frame_stack < 1 or self.image_size < 36:
            raise ValueError(
                f'frame_stack must be >= 1 and image_size >= 36, got {self.frame_stack}, '
                f'{self.image_size}')
        if self.n_waypoints < 1:
            raise ValueError(f'n_waypoints must be >= 1, got {self.n_waypoints}')
        if self.image_scaling not in IMAGE_SCALINGS:
            raise ValueError(
                f'image_scaling must be one of {IMAGE_SCALINGS}, got {self.image_scaling!r}')
        for name in ('waypoint_spacing_m', 'speed_scale', 'lateral_scale', 'waypoint_scale'):
            if not getattr(self, name) > 0:
                raise ValueError(f'{name} must be > 0, got {getattr(self, name)}')

    @property
    def vector_dim(self) -> int:
        """Length of the ego/route vector: 3 ego terms + (x, y) per waypoint."""
        return 3 + 2 * self.n_waypoints

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.frame_stack, self.image_size, self.image_size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ObservationSpec:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f'unknown observation spec keys: {sorted(unknown)}')
        return cls(**data)


def image_to_gray(data, width: int, height: int, encoding: str, step: int = 0,
                  size: int = 84) -> np.ndarray:
    """
    Convert a raw image buffer (sensor_msgs/Image layout) to a gray size x size uint8 frame.

    Raises ObservationError with the reason for an unknown encoding or a buffer that does not
    match width, height and step.
    """
    if encoding not in SUPPORTED_ENCODINGS:
        raise ObservationError(
            f'unsupported image encoding {encoding!r}; supported: '
            f'{", ".join(SUPPORTED_ENCODINGS)}')
    channels, conversion = SUPPORTED_ENCODINGS[encoding]
    if width <= 0 or height <= 0:
        raise ObservationError(f'image size must be positive, got {width}x{height}')
    row_bytes = width * channels
    step = step or row_bytes
    if step < row_bytes:
        raise ObservationError(f'image step {step} is smaller than width x channels {row_bytes}')
    buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size != step * height:
        raise ObservationError(
            f'image data has {buffer.size} bytes, expected step x height = {step * height} '
            f'for {width}x{height} {encoding}')
    pixels = buffer.reshape(height, step)[:, :row_bytes].reshape(height, width, channels)
    gray = pixels[:, :, 0] if conversion is None else cv2.cvtColor(pixels, conversion)
    if gray.shape == (size, size):
        return np.ascontiguousarray(gray)
    # OpenCV's area resize is much faster at an exact factor of 2 than at a fractional one
    # (measured: docs/bench.md#design-measurements), so halve large frames first: the result
    # differs from a one-step area resize by rounding only (at most 1 gray level) while the
    # halved frame keeps at least 3 pixels per output pixel.
    while gray.shape[0] % 2 == gray.shape[1] % 2 == 0 and min(gray.shape) >= 6 * size:
        gray = cv2.resize(gray, (gray.shape[1] // 2, gray.shape[0] // 2),
                          interpolation=cv2.INTER_AREA)
    return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)


class FrameStack:
    """The last ``n`` frames, oldest first, zero-filled at episode start."""

    def __init__(self, n: int = 4, size: int = 84) -> None:
        self._frames = np.zeros((n, size, size), dtype=np.uint8)

    def reset(self) -> None:
        self._frames[:] = 0

    def push(self, frame: np.ndarray) -> np.ndarray:
        """Append the newest frame and return a copy of the stack."""
        self._frames[:-1] = self._frames[1:]
        self._frames[-1] = frame
        return self._frames.copy()

    @property
    def stack(self) -> np.ndarray:
        return self._frames.copy()


def wrap_angle(angle: float) -> float:
    """Wrap an angle to [-pi, pi)."""
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


def yaw_from_quaternion(x: float, y: float, z: float, w: float) -> float:
    """Yaw (rotation about z) of a quaternion, REP-103."""
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


@dataclass(frozen=True)
class RouteState:
    """Where the vehicle is relative to the route."""

    index: int                 # nearest waypoint
    lateral_deviation: float   # metres, positive = vehicle left of the route (REP-103)
    heading_error: float       # radians, vehicle yaw minus route heading, wrapped
    progress_m: float          # arc length of the vehicle's projection onto the route


class Route:
    """An open polyline of waypoints (about 2 m apart) with fast nearest-point queries."""

    SEARCH_BACK = 5
    SEARCH_AHEAD = 60
    REACQUIRE_M = 8.0

    def __init__(self, xy: np.ndarray) -> None:
        xy = np.asarray(xy, dtype=np.float64)
        if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) < 2:
            raise ObservationError(f'a route needs >= 2 (x, y) waypoints, got shape {xy.shape}')
        if not np.isfinite(xy).all():
            raise ObservationError('route waypoints contain NaN or inf')
        self.xy = xy
        seg = np.diff(xy, axis=0)
        self._seg_len = np.maximum(np.hypot(seg[:, 0], seg[:, 1]), 1e-9)
        self._seg_dir = seg / self._seg_len[:, None]
        self.cum_length = np.concatenate(([0.0], np.cumsum(self._seg_len)))
        self._hint: int | None = None

    def __len__(self) -> int:
        return len(self.xy)

    @property
    def length_m(self) -> float:
        return float(self.cum_length[-1])

    def reset_hint(self) -> None:
        self._hint = None

    def _nearest(self, x: float, y: float) -> int:
        if self._hint is not None:
            lo = max(self._hint - self.SEARCH_BACK, 0)
            hi = min(self._hint + self.SEARCH_AHEAD, len(self.xy))
            window = self.xy[lo:hi]
            d2 = (window[:, 0] - x) ** 2 + (window[:, 1] - y) ** 2
            best = int(np.argmin(d2))
            if d2[best] <= self.REACQUIRE_M ** 2:
                return lo + best
        d2 = (self.xy[:, 0] - x) ** 2 + (self.xy[:, 1] - y) ** 2
        return int(np.argmin(d2))

    def locate(self, x: float, y: float, yaw: float) -> RouteState:
        """Project the pose onto the route; remembers the index to search near it next time."""
        index = self._nearest(x, y)
        self._hint = index
        best = None
        for seg in (index - 1, index):
            if 0 <= seg < len(self._seg_len):
                dx, dy = x - self.xy[seg, 0], y - self.xy[seg, 1]
                ux, uy = self._seg_dir[seg]
                t = min(max(dx * ux + dy * uy, 0.0), self._seg_len[seg])
                lateral = ux * dy - uy * dx
                dist2 = (dx - t * ux) ** 2 + (dy - t * uy) ** 2
                if best is None or dist2 < best[0]:
                    best = (dist2, seg, t, lateral)
        _, seg, t, lateral = best
        heading = math.atan2(self._seg_dir[seg, 1], self._seg_dir[seg, 0])
        return RouteState(index=index, lateral_deviation=float(lateral),
                          heading_error=wrap_angle(yaw - heading),
                          progress_m=float(self.cum_length[seg] + t))

    def lookahead(self, index: int, n: int) -> np.ndarray:
        """Return the ``n`` waypoints after ``index``; past the route end the last one repeats."""
        ids = np.minimum(np.arange(index + 1, index + 1 + n), len(self.xy) - 1)
        return self.xy[ids]


def build_vector(route: Route, x: float, y: float, yaw: float, speed: float,
                 spec: ObservationSpec, state: RouteState | None = None
                 ) -> tuple[np.ndarray, RouteState]:
    """
    Ego/route vector of DESIGN §5 and the route state it was computed from.

    ``state``: ``route.locate(x, y, yaw)`` when the caller has just computed it for this very
    pose (the simulator does, for the reward), to save a second lookup.
    """
    if not all(math.isfinite(v) for v in (x, y, yaw, speed)):
        raise ObservationError(f'pose or speed is not finite: x={x} y={y} yaw={yaw} v={speed}')
    if state is None:
        state = route.locate(x, y, yaw)
    points = route.lookahead(state.index, spec.n_waypoints)
    dx, dy = points[:, 0] - x, points[:, 1] - y
    cos_yaw, sin_yaw = math.cos(yaw), math.sin(yaw)
    local = np.empty((spec.n_waypoints, 2), dtype=np.float64)
    local[:, 0] = cos_yaw * dx + sin_yaw * dy
    local[:, 1] = -sin_yaw * dx + cos_yaw * dy
    vector = np.empty(spec.vector_dim, dtype=np.float32)
    vector[0] = speed / spec.speed_scale
    vector[1] = state.lateral_deviation / spec.lateral_scale
    vector[2] = state.heading_error / math.pi
    vector[3:] = (local / spec.waypoint_scale).reshape(-1)
    if not np.isfinite(vector).all():   # float32 overflow of an absurd pose or route
        raise ObservationError(f'observation vector is not finite (pose x={x} y={y} v={speed} '
                               f'too far from the route or too fast)')
    return vector, state


def action_to_control(action) -> tuple[float, float, float]:
    """Map an action [steer, throttle_brake] to (steer, throttle, brake), clipped to range."""
    # min/max on floats: np.clip on scalars costs far more, and this runs every step
    # (measured: docs/bench.md#design-measurements)
    steer = min(max(float(action[0]), -1.0), 1.0)
    throttle_brake = min(max(float(action[1]), -1.0), 1.0)
    return steer, max(throttle_brake, 0.0), max(-throttle_brake, 0.0)
