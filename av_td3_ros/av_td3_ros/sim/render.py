"""
Forward camera renderer in numpy: a perspective view of the ground plane plus NPC boxes.

Why it is fast: the camera is fixed to the car, so the ground point seen by every pixel is a
constant in the vehicle frame. Those points are computed once per output size, each with the level
of a texture pyramid of the road (asphalt, lane markings, edge lines, grass) whose cell matches the
pixel's ground footprint, which gives the area-averaged look of a big image shrunk with INTER_AREA.
The levels are packed into one atlas, so a frame is one rigid transform of the points (two complex
vector operations), a clamp to each pixel's level and one bilinear lookup (``cv2.remap``); the sky
is a constant gradient. NPC vehicles are drawn as shaded boxes, far to near, with
``cv2.fillConvexPoly``.

The image of size (w, h) samples the image plane of the configured camera (width x height, fov),
so ``render_gray(84)`` looks like ``image_to_gray(render_bgra(width, height))`` without rendering
the big image. Output is ``bgra8`` like CARLA's camera, or gray with OpenCV's luma weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
import math

from av_td3_ros.sim.road import RoadNetwork
import cv2
import numpy as np

# OpenCV's BGR -> gray weights (ITU-R 601)
LUMA_B, LUMA_G, LUMA_R = 0.114, 0.587, 0.299
LUMA_BGR = np.array([LUMA_B, LUMA_G, LUMA_R], dtype=np.float32)

# surface classes of the texture and their paint (BGR), gray noise amplitude (blotches, grain)
GRASS, ASPHALT, WHITE_LINE, YELLOW_LINE = 0, 1, 2, 3
SURFACE_BGR = np.array([[70, 140, 90], [62, 62, 62], [232, 232, 232], [30, 200, 240]],
                       dtype=np.float32)
SURFACE_NOISE = np.array([[14.0, 6.0], [5.0, 3.0], [3.0, 2.0], [3.0, 2.0]], dtype=np.float32)
SKY_ZENITH_BGR = np.array([200, 150, 105], dtype=np.float32)
SKY_HORIZON_BGR = np.array([235, 222, 205], dtype=np.float32)
SUN = np.array([0.35, 0.45, 0.82]) / np.linalg.norm([0.35, 0.45, 0.82])
TEXTURE_RES_M = 0.05          # finest texture cell
TEXTURE_LEVELS = 9            # pyramid levels: cells of 5 cm .. 12.8 m
MAX_RAY_M = 2000.0            # ground beyond this is drawn as if at this distance
NEAR_M = 0.3                  # near clipping plane for the boxes
BOX_RANGE_M = 150.0


@dataclass(frozen=True)
class CameraConfig:
    """The forward camera: image size and horizontal fov like CARLA's, mount on the car."""

    width: int = 800
    height: int = 600
    fov_deg: float = 90.0
    x_m: float = 1.2          # ahead of the vehicle centre
    z_m: float = 1.7          # above the ground
    pitch_deg: float = -8.0   # CARLA convention: negative looks down

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f'camera size must be positive, got {self.width}x{self.height}')
        if not 10.0 <= self.fov_deg <= 170.0:
            raise ValueError(f'camera fov_deg must be in [10, 170], got {self.fov_deg}')
        if self.z_m <= 0.2:
            raise ValueError(f'camera z_m must be > 0.2, got {self.z_m}')

    @property
    def focal(self) -> float:
        """Focal length in pixels of the width x height image."""
        return self.width / (2.0 * math.tan(math.radians(self.fov_deg) / 2.0))

    def intrinsics(self) -> tuple[float, float, float]:
        """Return (f, cx, cy) of the width x height image (square pixels, centred)."""
        return self.focal, self.width / 2.0, self.height / 2.0

    @cached_property
    def axes(self) -> np.ndarray:
        """Rows: camera forward, left, up in the vehicle frame (x fwd, y left, z up)."""
        down = -math.radians(self.pitch_deg)
        return np.array([[math.cos(down), 0.0, -math.sin(down)], [0.0, 1.0, 0.0],
                         [math.sin(down), 0.0, math.cos(down)]])

    def to_camera(self, points: np.ndarray, pose: tuple[float, float, float]) -> np.ndarray:
        """World points (..., 3) -> camera frame (..., 3): forward, left, up."""
        x, y, yaw = pose
        c, s = math.cos(yaw), math.sin(yaw)
        dx, dy = points[..., 0] - x, points[..., 1] - y
        local = np.stack((c * dx + s * dy - self.x_m, -s * dx + c * dy,
                          points[..., 2] - self.z_m), axis=-1)
        return local @ self.axes.T

    def project(self, points: np.ndarray, pose: tuple[float, float, float], out_w: int,
                out_h: int) -> tuple[np.ndarray, np.ndarray]:
        """World points (..., 3) -> (pixel coords (..., 2) in an out_w x out_h image, depth)."""
        cam = self.to_camera(points, pose)
        f, cx, cy = self.intrinsics()
        with np.errstate(divide='ignore', invalid='ignore'):
            u = (cx - f * cam[..., 1] / cam[..., 0]) * (out_w / self.width)
            v = (cy - f * cam[..., 2] / cam[..., 0]) * (out_h / self.height)
        return np.stack((u, v), axis=-1), cam[..., 0]


@dataclass
class _Atlas:
    """All pyramid levels packed into one image, so a frame needs a single texture lookup."""

    image: np.ndarray                         # (H, W) gray or (H, W, 4) BGRA
    origins: list[tuple[int, int]]            # (col, row) of each level's cell (0, 0)
    shapes: list[tuple[int, int]]             # (rows, cols) of each level


@dataclass
class _PixelTable:
    """Per output size: the ground rows, each pixel's ground point and texture level."""

    first_row: int            # rows above are sky
    ground: np.ndarray        # (n,) complex64: ground point (x + iy, vehicle frame) / cell size
    inv_cell: np.ndarray      # (n,) float32: 1 / cell size of the pixel's level
    shift: np.ndarray         # (n,) complex64: level origin in the atlas - 0.5 (cell centres)
    low: np.ndarray           # (n, 2) float32: level origin in the atlas (col, row)
    high: np.ndarray          # (n, 2) float32: last cell of the level in the atlas
    sky_gray: np.ndarray
    sky_bgra: np.ndarray


ATLAS_PAD = 2                 # replicated border around each level (bilinear reads 1 beyond)
# textures of recently used roads (worlds of one seed share them: tests, env resets, nodes)
_ATLAS_CACHE: dict[tuple, _Atlas] = {}
_ATLAS_CACHE_SIZE = 4


# box corners: bottom 0-3 then top 4-7, counter-clockwise from front-left (signs along the
# length and the width); faces front, rear, left, right, top as corner indices
_CORNER_SIGNS = ((1, 1), (-1, 1), (-1, -1), (1, -1))
_FACES_LIST = ((0, 3, 7, 4), (1, 2, 6, 5), (0, 1, 5, 4), (2, 3, 7, 6), (4, 5, 6, 7))


class Renderer:
    """Renders the camera view of a road; textures are built once per road and kind."""

    def __init__(self, road: RoadNetwork, camera: CameraConfig, seed: int = 0) -> None:
        self.road = road
        self.camera = camera
        self.seed = seed
        margin = road.config.half_width_m + road.config.shoulder_m + 8.0
        x0, y0, x1, y1 = road.bounds(margin)
        self.origin = (x0, y0)
        # level 0 sized to a multiple of 2**(levels-1) so that every level halves exactly
        unit = 1 << (TEXTURE_LEVELS - 1)
        self.tex_shape = (unit * math.ceil((y1 - y0) / TEXTURE_RES_M / unit),
                          unit * math.ceil((x1 - x0) / TEXTURE_RES_M / unit))
        self._tables: dict[tuple[int, int], _PixelTable] = {}

    # -- textures -----------------------------------------------------------------------------
    def surface_coverage(self) -> dict[int, np.ndarray]:
        """
        Rasterise the road at TEXTURE_RES_M: anti-aliased coverage (uint8, 255 = full).

        One mask per painted class over the grass: ASPHALT, then WHITE_LINE (edge lines) and
        YELLOW_LINE (dashed centre line) on top of it.
        """
        cfg, road = self.road.config, self.road
        shift = 4
        scale = (1 << shift) / TEXTURE_RES_M

        def pix(offset: float, s: np.ndarray | None = None) -> np.ndarray:
            x, y, _ = road.pose(road.s if s is None else s, offset)
            pts = np.stack((x - self.origin[0], y - self.origin[1]), axis=1) * scale
            return np.round(pts).astype(np.int32)

        asphalt = np.zeros(self.tex_shape, np.uint8)
        outer = cfg.half_width_m + cfg.shoulder_m
        # the two offset curves bound a ring: fill the outer one, cut out the inner one
        ring_in, ring_out = (outer, -outer) if _signed_area(road.xy) > 0 else (-outer, outer)
        cv2.fillPoly(asphalt, [pix(ring_out)], 255, cv2.LINE_AA, shift)
        cv2.fillPoly(asphalt, [pix(ring_in)], 0, cv2.LINE_AA, shift)
        white = np.zeros(self.tex_shape, np.uint8)
        edge = cfg.half_width_m - 0.5 * cfg.edge_line_width_m
        cv2.polylines(white, [pix(edge), pix(-edge)], True, 255,
                      max(1, round(cfg.edge_line_width_m / TEXTURE_RES_M)), cv2.LINE_AA, shift)
        yellow = np.zeros(self.tex_shape, np.uint8)
        period = cfg.dash_length_m + cfg.dash_gap_m
        dashes = [pix(0.0, np.arange(start, start + cfg.dash_length_m + 1e-9, 0.25))
                  for start in np.arange(0.0, road.length - cfg.dash_length_m, period)]
        cv2.polylines(yellow, dashes, False, 255,
                      max(1, round(cfg.centre_line_width_m / TEXTURE_RES_M)), cv2.LINE_AA, shift)
        return {ASPHALT: asphalt, WHITE_LINE: white, YELLOW_LINE: yellow}

    def surface_labels(self, coverage: dict[int, np.ndarray] | None = None) -> np.ndarray:
        """Surface class of each texture cell (the class covering most of it)."""
        coverage = coverage or self.surface_coverage()
        labels = np.full(self.tex_shape, GRASS, np.uint8)
        for cls in (ASPHALT, WHITE_LINE, YELLOW_LINE):
            labels[coverage[cls] > 127] = cls
        return labels

    def _noise(self, labels: np.ndarray) -> np.ndarray:
        """Gray texture noise (blotches ~1 m, grain per cell), amplitude by surface class."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 7]))
        h, w = labels.shape
        coarse = rng.standard_normal((h // 20 + 2, w // 20 + 2), dtype=np.float32)
        noise = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
        noise *= cv2.LUT(labels, _lut(SURFACE_NOISE[:, 0]))
        grain = cv2.LUT(labels, _lut(SURFACE_NOISE[:, 1] / 8.0))
        grain *= rng.integers(-8, 9, size=(h, w), dtype=np.int8)
        noise += grain
        return noise

    def _atlas(self, kind: str) -> _Atlas:
        """Texture pyramid (gray or BGRA) packed in one image; level k has 5 cm * 2**k cells."""
        key = (self.seed, self.road.config, self.road.length, kind)
        if key in _ATLAS_CACHE:
            return _ATLAS_CACHE[key]
        coverage = self.surface_coverage()
        noise = self._noise(self.surface_labels(coverage))
        alpha = {cls: m.astype(np.float32) * np.float32(1 / 255) for cls, m in coverage.items()}
        paint = SURFACE_BGR @ LUMA_BGR if kind == 'gray' else SURFACE_BGR
        channels = []
        for c in ([None] if kind == 'gray' else range(3)):
            value = paint if c is None else paint[:, c]
            base = np.full(self.tex_shape, value[GRASS], np.float32)
            for cls in (ASPHALT, WHITE_LINE, YELLOW_LINE):     # paint layers, blended
                base += (np.float32(value[cls]) - base) * alpha[cls]
            base += noise
            channels.append(cv2.convertScaleAbs(base))   # rounds, saturates (values stay > 0)
        level = channels[0] if kind == 'gray' else cv2.merge(channels)
        del coverage, noise, alpha, channels
        if kind == 'bgra':
            level = cv2.cvtColor(level, cv2.COLOR_BGR2BGRA)
        levels = [level]
        for _ in range(TEXTURE_LEVELS - 1):
            level = cv2.resize(level, (level.shape[1] // 2, level.shape[0] // 2),
                               interpolation=cv2.INTER_AREA)
            levels.append(level)
        origins, shapes = _atlas_layout([lv.shape[:2] for lv in levels])
        rows = max(r + h for (_, r), (h, _) in zip(origins, shapes, strict=True)) + ATLAS_PAD
        cols = max(c + w for (c, _), (_, w) in zip(origins, shapes, strict=True)) + ATLAS_PAD
        image = np.zeros((rows, cols, *levels[0].shape[2:]), np.uint8)
        for (c, r), lv in zip(origins, levels, strict=True):
            h, w = lv.shape[:2]
            image[r - ATLAS_PAD:r + h + ATLAS_PAD, c - ATLAS_PAD:c + w + ATLAS_PAD] = \
                cv2.copyMakeBorder(lv, ATLAS_PAD, ATLAS_PAD, ATLAS_PAD, ATLAS_PAD,
                                   cv2.BORDER_REPLICATE)
        while len(_ATLAS_CACHE) >= _ATLAS_CACHE_SIZE:
            _ATLAS_CACHE.pop(next(iter(_ATLAS_CACHE)))
        _ATLAS_CACHE[key] = _Atlas(image, origins, shapes)
        return _ATLAS_CACHE[key]

    # -- per output size ----------------------------------------------------------------------
    def _table(self, out_w: int, out_h: int) -> _PixelTable:
        key = (out_w, out_h)
        if key in self._tables:
            return self._tables[key]
        cam = self.camera
        f, cx, cy = cam.intrinsics()
        axes = cam.axes

        def ground_at(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """Ground point (vehicle frame) seen at image-plane coords (u, v) of the camera."""
            d = (axes[0][:, None, None] - axes[1][:, None, None] * ((u - cx) / f)
                 - axes[2][:, None, None] * ((v - cy) / f))
            down = -d[2]
            t = np.minimum(cam.z_m / np.maximum(down, 1e-12), MAX_RAY_M / np.hypot(d[0], d[1]))
            return np.stack((cam.x_m + t * d[0], t * d[1])), down > 1e-9

        sx, sy = cam.width / out_w, cam.height / out_h
        corners, _ = ground_at(*np.meshgrid(np.arange(out_w + 1) * sx,
                                            np.arange(out_h + 1) * sy))
        centre, is_ground = ground_at(*np.meshgrid((np.arange(out_w) + 0.5) * sx,
                                                   (np.arange(out_h) + 0.5) * sy))
        # ground footprint of each pixel: geometric mean of its extent along rows and columns
        along_u = np.hypot(*np.diff(corners, axis=2))
        along_v = np.hypot(*np.diff(corners, axis=1))
        footprint = np.sqrt(0.5 * (along_u[:-1] + along_u[1:])
                            * 0.5 * (along_v[:, :-1] + along_v[:, 1:]))
        level = np.log2(np.maximum(footprint, TEXTURE_RES_M) / TEXTURE_RES_M)
        level = np.clip(np.floor(level), 0, TEXTURE_LEVELS - 1).astype(int)
        ground_rows = np.flatnonzero(is_ground.all(axis=1))
        first = int(ground_rows[0]) if ground_rows.size else out_h
        level = level[first:]
        inv = (1.0 / (TEXTURE_RES_M * 2.0 ** level)).reshape(-1)
        origins, shapes = _atlas_layout([(self.tex_shape[0] >> k, self.tex_shape[1] >> k)
                                         for k in range(TEXTURE_LEVELS)])
        origin = np.array(origins, np.float32)[level].reshape(-1, 2)
        last = origin + np.array([(w - 1, h - 1) for h, w in shapes],
                                 np.float32)[level].reshape(-1, 2)
        sky_gray, sky_bgra = self._sky(out_w, out_h)
        table = _PixelTable(
            first_row=first,
            ground=((centre[0, first:] + 1j * centre[1, first:]).reshape(-1) * inv
                    ).astype(np.complex64),
            inv_cell=inv.astype(np.float32),
            shift=(origin[:, 0] - 0.5 + 1j * (origin[:, 1] - 0.5)).astype(np.complex64),
            low=origin, high=last, sky_gray=sky_gray, sky_bgra=sky_bgra)
        self._tables[key] = table
        return table

    def _sky(self, out_w: int, out_h: int) -> tuple[np.ndarray, np.ndarray]:
        """Sky gradient by elevation: pale at the horizon, blue overhead."""
        cam = self.camera
        f, _, cy = cam.intrinsics()
        v = (np.arange(out_h) + 0.5) * cam.height / out_h
        elevation = np.arctan2(cy - v, f) + math.radians(cam.pitch_deg)
        t = np.clip(elevation / math.radians(35.0), 0.0, 1.0)[:, None]
        bgr = SKY_HORIZON_BGR * (1.0 - t) + SKY_ZENITH_BGR * t
        bgr = np.repeat(bgr[:, None, :], out_w, axis=1)
        gray = np.clip(np.rint(bgr @ LUMA_BGR), 0, 255).astype(np.uint8)
        bgra = cv2.cvtColor(np.clip(np.rint(bgr), 0, 255).astype(np.uint8), cv2.COLOR_BGR2BGRA)
        return gray, bgra

    # -- frames -------------------------------------------------------------------------------
    def render_gray(self, pose, traffic, out_w: int, out_h: int) -> np.ndarray:
        """Gray (out_h, out_w) uint8 frame of the camera on the car at ``pose`` (x, y, yaw)."""
        table = self._table(out_w, out_h)
        img = table.sky_gray.copy()
        self._draw_ground(img, table, self._atlas('gray'), pose)
        self._draw_boxes(img, pose, traffic, out_w, out_h, gray=True)
        return img

    def render_bgra(self, pose, traffic, out_w: int, out_h: int) -> np.ndarray:
        """BGRA (out_h, out_w, 4) uint8 frame (CARLA's ``bgra8`` layout)."""
        table = self._table(out_w, out_h)
        img = table.sky_bgra.copy()
        self._draw_ground(img, table, self._atlas('bgra'), pose)
        self._draw_boxes(img, pose, traffic, out_w, out_h, gray=False)
        return img

    def _draw_ground(self, img: np.ndarray, table: _PixelTable, atlas: _Atlas, pose) -> None:
        """Fill the ground rows: one rigid transform, a clamp to each level, one lookup."""
        if table.first_row >= img.shape[0]:
            return
        x, y, yaw = pose
        # complex arithmetic does the 2-D rotation + translation in two vector operations:
        # texture coords = (ground * e^{i yaw} + (pose - origin) / cell) + level origin
        coords = table.ground * np.complex64(complex(math.cos(yaw), math.sin(yaw)))
        coords += table.inv_cell * np.complex64(complex(x - self.origin[0], y - self.origin[1]))
        coords += table.shift
        xy = coords.view(np.float32).reshape(-1, 2)
        np.minimum(xy, table.high, out=xy)
        np.maximum(xy, table.low, out=xy)
        cv2.remap(atlas.image, xy.reshape(img.shape[0] - table.first_row, img.shape[1], 2),
                  None, cv2.INTER_LINEAR, dst=img[table.first_row:],
                  borderMode=cv2.BORDER_REPLICATE)

    def _draw_boxes(self, img: np.ndarray, pose, traffic, out_w: int, out_h: int,
                    gray: bool) -> None:
        """
        Draw the NPCs as shaded boxes, far to near (painter's algorithm).

        Plain Python floats on purpose: a handful of boxes of 8 corners costs less this way
        than the per-call overhead of a few dozen small numpy operations.
        """
        if traffic is None or len(traffic) == 0:
            return
        cam = self.camera
        x, y, yaw = pose
        c, s = math.cos(yaw), math.sin(yaw)
        f, cx, cy = cam.intrinsics()
        fu, fv = f * out_w / cam.width, f * out_h / cam.height
        cu, cv = cx * out_w / cam.width - 0.5, cy * out_h / cam.height - 0.5
        down = -math.radians(cam.pitch_deg)
        cos_p, sin_p = math.cos(down), math.sin(down)
        tan_half = math.tan(math.radians(cam.fov_deg) / 2.0)
        boxes = []
        for k, (nx, ny) in enumerate(zip(traffic.x, traffic.y, strict=True)):
            ahead = c * (nx - x) + s * (ny - y) - cam.x_m
            left = c * (ny - y) - s * (nx - x)
            # inside the range and the horizontal fov, with a margin of a car's size
            if -3.0 < ahead < BOX_RANGE_M and abs(left) < ahead * tan_half + 3.5 * (1 + tan_half):
                boxes.append((ahead * ahead + left * left, k, ahead, left))
        if not boxes:
            return
        boxes.sort(reverse=True)
        shift = 4
        scale = float(1 << shift)
        line = cv2.LINE_AA if gray else cv2.LINE_8
        for _, k, ahead, left in boxes:
            world_yaw = traffic.yaw[k]
            rel = world_yaw - yaw
            hc, hs = math.cos(rel), math.sin(rel)
            hl, hw = 0.5 * traffic.length[k], 0.5 * traffic.width[k]
            height = traffic.height[k]
            paint = traffic.color[k]
            # far away a box is a few pixels: its silhouette rectangle is enough (and cheap)
            depth = ahead * cos_p - (0.5 * height - cam.z_m) * sin_p
            half = hl * abs(hs) + hw * abs(hc)
            if depth > NEAR_M and fu * half / depth < 1.5:
                top = ahead * sin_p + (height - cam.z_m) * cos_p
                bottom = ahead * sin_p - cam.z_m * cos_p
                u0, u1 = cu - fu * (left + half) / depth, cu - fu * (left - half) / depth
                v0, v1 = cv - fv * top / depth, cv - fv * bottom / depth
                pts = np.array(((u0, v0), (u1, v0), (u1, v1), (u0, v1)), np.float64) * scale
                shade = 0.8
                color = ((shade * (paint[0] * LUMA_B + paint[1] * LUMA_G + paint[2] * LUMA_R),)
                         if gray else (shade * paint[0], shade * paint[1], shade * paint[2],
                                       255.0))
                cv2.fillConvexPoly(img, pts.astype(np.int32), color, line, shift)
                continue
            corners = []                       # camera frame (depth, left, up)
            for z in (-cam.z_m, height - cam.z_m):
                for sa, sb in _CORNER_SIGNS:
                    px = ahead + sa * hl * hc - sb * hw * hs
                    py = left + sa * hl * hs + sb * hw * hc
                    corners.append((px * cos_p - z * sin_p, py, px * sin_p + z * cos_p))
            # the camera relative to the box, in the box frame: which faces look at it
            along = -ahead * hc - left * hs
            across = -left * hc + ahead * hs
            facing = (along > hl, along < -hl, across > hw, across < -hw, cam.z_m > height)
            front_sun = math.cos(world_yaw) * SUN[0] + math.sin(world_yaw) * SUN[1]
            left_sun = math.cos(world_yaw) * SUN[1] - math.sin(world_yaw) * SUN[0]
            suns = (front_sun, -front_sun, left_sun, -left_sun, SUN[2])
            all_front = all(p[0] >= NEAR_M for p in corners)
            for face, visible in enumerate(facing):
                if not visible:
                    continue
                poly = [corners[i] for i in _FACES_LIST[face]]
                if not all_front:
                    poly = _clip_near(poly)
                    if len(poly) < 3:
                        continue
                pts = np.array([((cu - fu * p[1] / p[0]) * scale, (cv - fv * p[2] / p[0]) * scale)
                                for p in poly], dtype=np.int32)
                shade = 0.55 + 0.45 * max(0.0, suns[face])
                if gray:
                    color = (shade * (paint[0] * LUMA_B + paint[1] * LUMA_G + paint[2] * LUMA_R),)
                else:
                    color = (shade * paint[0], shade * paint[1], shade * paint[2], 255.0)
                cv2.fillConvexPoly(img, pts, color, line, shift)


def _signed_area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _lut(values: np.ndarray) -> np.ndarray:
    """Return a 256-entry float32 lookup table for cv2.LUT over surface classes."""
    table = np.zeros(256, np.float32)
    table[:len(values)] = values
    return table


def _atlas_layout(shapes: list[tuple[int, int]]
                  ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Place level 0 on the left and the smaller levels in a column to its right."""
    origins = [(ATLAS_PAD, ATLAS_PAD)]
    col = ATLAS_PAD + shapes[0][1] + 2 * ATLAS_PAD
    row = ATLAS_PAD
    for h, _ in shapes[1:]:
        origins.append((col, row))
        row += h + 2 * ATLAS_PAD
    return origins, list(shapes)


def _clip_near(poly: list[tuple[float, float, float]]) -> list[tuple[float, float, float]]:
    """Clip a polygon (camera frame) to depth >= NEAR_M (Sutherland-Hodgman, one plane)."""
    out = []
    for k, p in enumerate(poly):
        q = poly[(k + 1) % len(poly)]
        if p[0] >= NEAR_M:
            out.append(p)
        if (p[0] >= NEAR_M) != (q[0] >= NEAR_M):
            t = (NEAR_M - p[0]) / (q[0] - p[0])
            out.append(tuple(a + t * (b - a) for a, b in zip(p, q, strict=True)))
    return out
