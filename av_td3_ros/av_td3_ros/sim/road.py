"""
The road network: a procedurally generated closed two-lane road with curves of varied radius.

The centreline is a smooth closed curve r(theta) = R (1 + sum_k a_k cos(k theta + phi_k)),
k = 2..5, scaled to a lap length and resampled by arc length. Candidates with a curve tighter than
``min_radius_m`` or two stretches of road closer than ``clearance_m`` are rejected, so every lap
drives like a real country road: straights, gentle sweepers and a few tight bends.
Positions on the road are (s, offset): arc length along the centreline (direction of increasing s)
and signed lateral offset, positive to the left (REP-103). Traffic keeps right: the lane with
direction +1 (driving toward increasing s) lies at offset -lane_width/2.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
import math

import numpy as np


@dataclass(frozen=True)
class RoadConfig:
    """Geometry of the generated road; all lengths in metres."""

    lap_length_min_m: float = 250.0
    lap_length_max_m: float = 310.0
    min_radius_m: float = 18.0
    clearance_m: float = 22.0          # closest approach of two stretches of road
    lane_width_m: float = 3.5          # two lanes: road edges at +-lane_width
    shoulder_m: float = 0.6            # asphalt beyond the edge line
    edge_line_width_m: float = 0.15
    centre_line_width_m: float = 0.15
    dash_length_m: float = 3.0         # dashed centre line: dash, then gap
    dash_gap_m: float = 3.0
    sample_spacing_m: float = 0.5      # centreline sampling

    def __post_init__(self) -> None:
        if not 0 < self.lap_length_min_m <= self.lap_length_max_m:
            raise ValueError('lap length range must be positive and ordered')
        for name in ('min_radius_m', 'clearance_m', 'lane_width_m', 'sample_spacing_m',
                     'edge_line_width_m', 'centre_line_width_m', 'dash_length_m'):
            if getattr(self, name) <= 0:
                raise ValueError(f'{name} must be > 0, got {getattr(self, name)}')
        if self.min_radius_m <= 2 * self.lane_width_m:
            raise ValueError('min_radius_m must exceed the road width')

    @property
    def half_width_m(self) -> float:
        """Distance from the centre line to the road edge (edge of the carriageway)."""
        return self.lane_width_m


def lane_offset(direction: int | np.ndarray, config: RoadConfig) -> float | np.ndarray:
    """Lateral offset of the lane driving in ``direction`` (+1/-1 along s): keep right."""
    return -0.5 * config.lane_width_m * direction


class RoadNetwork:
    """A closed two-lane road: centreline samples with arc length, heading and curvature."""

    MAX_ATTEMPTS = 200

    def __init__(self, xy: np.ndarray, config: RoadConfig) -> None:
        """Build from closed centreline samples spaced ``config.sample_spacing_m`` apart."""
        self.config = config
        self.xy = np.asarray(xy, dtype=np.float64)
        nxt = np.roll(self.xy, -1, axis=0)
        seg = np.hypot(*(nxt - self.xy).T)
        self.length = float(seg.sum())
        self.s = np.concatenate(([0.0], np.cumsum(seg)[:-1]))
        prev = np.roll(self.xy, 1, axis=0)
        d = nxt - prev
        self.heading = np.arctan2(d[:, 1], d[:, 0])
        self.cos_h = np.cos(self.heading)
        self.sin_h = np.sin(self.heading)
        dh = np.angle(np.exp(1j * (np.roll(self.heading, -1) - np.roll(self.heading, 1))))
        ds = np.roll(self.s, -1) - np.roll(self.s, 1)
        ds[0] += self.length
        ds[-1] += self.length
        self.curvature = dh / ds
        # periodic tables for np.interp (first sample repeated at s = length)
        self._s_ext = np.concatenate((self.s, [self.length]))
        self._tables = [np.concatenate((a, a[:1])) for a in (
            self.xy[:, 0], self.xy[:, 1], self.cos_h, self.sin_h)]
        self._lists = (self._s_ext.tolist(), *(t.tolist() for t in self._tables))

    @classmethod
    def generate(cls, rng: np.random.Generator, config: RoadConfig | None = None) -> RoadNetwork:
        """Draw a road from ``rng``; deterministic for the generator's state."""
        config = config or RoadConfig()
        theta = np.linspace(0.0, 2.0 * np.pi, 4096, endpoint=False)
        for _ in range(cls.MAX_ATTEMPTS):
            lap = rng.uniform(config.lap_length_min_m, config.lap_length_max_m)
            r = np.ones_like(theta)
            for k in range(2, 6):
                amplitude = rng.uniform(0.0, 0.28 / (k - 1))
                r += amplitude * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
            if r.min() < 0.35:
                continue
            raw = np.stack((r * np.cos(theta), r * np.sin(theta)), axis=1)
            raw *= lap / _closed_length(raw)
            xy = _resample_closed(raw, config.sample_spacing_m)
            road = cls(xy - xy.mean(axis=0), config)
            if road.min_radius() >= config.min_radius_m and road.min_clearance() >= \
                    config.clearance_m:
                return road
        raise RuntimeError(f'no road met the constraints in {cls.MAX_ATTEMPTS} attempts: '
                           f'relax min_radius_m={config.min_radius_m} or clearance_m')

    def min_radius(self) -> float:
        return float(1.0 / max(np.abs(self.curvature).max(), 1e-9))

    def min_clearance(self, separation_m: float = 40.0) -> float:
        """Smallest distance between two points of the road more than ``separation_m`` apart."""
        step = max(1, round(2.0 / self.config.sample_spacing_m))
        pts, s = self.xy[::step], self.s[::step]
        ds = np.abs(s[:, None] - s[None, :])
        ds = np.minimum(ds, self.length - ds)
        d = np.hypot(pts[:, None, 0] - pts[None, :, 0], pts[:, None, 1] - pts[None, :, 1])
        far = ds > separation_m
        return float(d[far].min()) if far.any() else math.inf

    def pose(self, s: np.ndarray | float, offset: np.ndarray | float = 0.0
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (x, y, heading of increasing s) at arc lengths ``s`` and lateral ``offset``."""
        s = np.mod(s, self.length)
        x, y, c, sn = (np.interp(s, self._s_ext, t) for t in self._tables)
        x = x - sn * offset
        y = y + c * offset
        return x, y, np.arctan2(sn, c)

    def pose_scalar(self, s: float, offset: float = 0.0) -> tuple[float, float, float]:
        """:meth:`pose` for one point, without numpy (per-vehicle loops, every step)."""
        s_tab, x_tab, y_tab, c_tab, sn_tab = self._lists
        s %= self.length
        i = min(bisect.bisect_right(s_tab, s) - 1, len(s_tab) - 2)
        t = (s - s_tab[i]) / (s_tab[i + 1] - s_tab[i])
        c = c_tab[i] + t * (c_tab[i + 1] - c_tab[i])
        sn = sn_tab[i] + t * (sn_tab[i + 1] - sn_tab[i])
        return (x_tab[i] + t * (x_tab[i + 1] - x_tab[i]) - sn * offset,
                y_tab[i] + t * (y_tab[i + 1] - y_tab[i]) + c * offset, math.atan2(sn, c))

    def lane_points(self, s0: float, direction: int, spacing_m: float, length_m: float
                    ) -> tuple[np.ndarray, np.ndarray]:
        """
        Return points along the lane of ``direction`` starting at s0, ``spacing_m`` apart.

        Spacing is measured along the lane itself (not the centreline). Returns (xy (n, 2),
        centreline arc length of each point), n = floor(length_m / spacing_m) + 1.
        """
        fine = self.config.sample_spacing_m / 2.0
        n_fine = math.ceil(length_m * 1.3 / fine) + 2
        s_fine = s0 + direction * fine * np.arange(n_fine)
        x, y, _ = self.pose(s_fine, lane_offset(direction, self.config))
        along = np.concatenate(([0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))))
        targets = spacing_m * np.arange(math.floor(length_m / spacing_m + 1e-9) + 1)
        if targets[-1] > along[-1]:
            raise ValueError(f'lane shorter than the requested {length_m} m')
        xy = np.stack((np.interp(targets, along, x), np.interp(targets, along, y)), axis=1)
        return xy, np.mod(np.interp(targets, along, s_fine), self.length)

    def lane_length(self, direction: int) -> float:
        """Length of one lap of the lane driving in ``direction``."""
        s = direction * np.arange(0.0, self.length, self.config.sample_spacing_m / 2.0)
        x, y, _ = self.pose(np.append(s, direction * self.length), lane_offset(direction,
                                                                               self.config))
        return float(np.hypot(np.diff(x), np.diff(y)).sum())

    def bounds(self, margin_m: float) -> tuple[float, float, float, float]:
        """Axis-aligned box (x_min, y_min, x_max, y_max) around the road plus ``margin_m``."""
        lo = self.xy.min(axis=0) - margin_m
        hi = self.xy.max(axis=0) + margin_m
        return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def _closed_length(xy: np.ndarray) -> float:
    return float(np.hypot(*(np.roll(xy, -1, axis=0) - xy).T).sum())


def _resample_closed(xy: np.ndarray, spacing: float) -> np.ndarray:
    closed = np.vstack((xy, xy[:1]))
    along = np.concatenate(([0.0], np.cumsum(np.hypot(*np.diff(closed, axis=0).T))))
    n = max(round(along[-1] / spacing), 8)
    targets = np.linspace(0.0, along[-1], n, endpoint=False)
    return np.stack((np.interp(targets, along, closed[:, 0]),
                     np.interp(targets, along, closed[:, 1])), axis=1)
