"""
STAND-IN for the subset of the CARLA Python API (0.9.13-0.9.16) that carla_episode uses.

No CARLA server can run on the test machines, so this module models, in plain Python, the
client objects the episode logic talks to, with CARLA's documented semantics:

- ``Location``/``Vector3D``/``Rotation``/``Transform`` in CARLA's left-handed frame (x forward,
  y right, z up; yaw in degrees, clockwise seen from above; ``Rotation(pitch, yaw, roll)``).
- ``Map`` and ``Waypoint`` built from OpenDRIVE-like roads: the map's y is OpenDRIVE's y negated,
  lane ids < 0 lie right of the reference line and drive towards growing ``s``, lane ids > 0 drive
  towards falling ``s``; ``next(d)`` moves ``d`` metres of ``s`` along the driving direction and
  continues into every successor lane (one waypoint per branch, ``[]`` at a dead end);
  ``get_topology()`` gives one (entry, exit) pair per lane; ``get_waypoint(loc,
  project_to_road)`` projects onto the nearest driving lane or returns None off the road.
- ``World`` (settings, weather, actors, blueprints, ``try_spawn_actor`` refusing occupied spots),
  ``Vehicle`` (transform, target velocity, control, autopilot), ``TrafficManager`` and ``Client``.

It is a stand-in, not CARLA: no physics, no rendering, autopilot vehicles stand still, and only
the calls carla_episode makes exist. ``to_xodr()`` writes the same roads as OpenDRIVE text, so
that tests compare this stand-in with the real ``carla.Map`` (which builds a map from OpenDRIVE
without a server) whenever the carla wheel is installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import fnmatch
import hashlib
import importlib
import itertools
import math
import os
from pathlib import Path
import shutil
import subprocess
import sys
import tempfile
import types

import numpy as np

# --------------------------------------------------------------------------- geometry types


class Vector3D:
    """carla.Vector3D."""

    def __init__(self, x: float = 0.0, y: float = 0.0, z: float = 0.0) -> None:
        self.x, self.y, self.z = float(x), float(y), float(z)

    def length(self) -> float:
        return math.sqrt(self.x ** 2 + self.y ** 2 + self.z ** 2)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(x={self.x:.6f}, y={self.y:.6f}, z={self.z:.6f})'


class BoundingBox:
    """carla.BoundingBox: centre and half-extents, in the actor's frame."""

    def __init__(self, location: Location | None = None, extent: Vector3D | None = None) -> None:
        self.location = location if location is not None else Location()
        self.extent = extent if extent is not None else Vector3D()


class Location(Vector3D):
    """carla.Location."""

    def distance(self, other: Location) -> float:
        return math.sqrt((self.x - other.x) ** 2 + (self.y - other.y) ** 2
                         + (self.z - other.z) ** 2)


class Rotation:
    """carla.Rotation; positional order is (pitch, yaw, roll), angles in degrees."""

    def __init__(self, pitch: float = 0.0, yaw: float = 0.0, roll: float = 0.0) -> None:
        self.pitch, self.yaw, self.roll = float(pitch), float(yaw), float(roll)

    def get_forward_vector(self) -> Vector3D:
        cp, yaw = math.cos(math.radians(self.pitch)), math.radians(self.yaw)
        return Vector3D(cp * math.cos(yaw), cp * math.sin(yaw), math.sin(math.radians(self.pitch)))

    def __repr__(self) -> str:
        return f'Rotation(pitch={self.pitch:.6f}, yaw={self.yaw:.6f}, roll={self.roll:.6f})'


class Transform:
    """carla.Transform."""

    def __init__(self, location: Location | None = None, rotation: Rotation | None = None) -> None:
        self.location = location if location is not None else Location()
        self.rotation = rotation if rotation is not None else Rotation()

    def get_forward_vector(self) -> Vector3D:
        return self.rotation.get_forward_vector()

    def __repr__(self) -> str:
        return f'Transform({self.location!r}, {self.rotation!r})'


class LaneType:
    """carla.LaneType flag values (those the episode logic uses)."""

    NONE = 1
    Driving = 2
    Sidewalk = 32
    Any = -2


class LaneMarkingType:
    """carla.LaneMarkingType values, as sent in CarlaLaneInvasionEvent.crossed_lane_markings."""

    Other = 0
    Broken = 1
    Solid = 2
    SolidSolid = 3
    SolidBroken = 4
    BrokenSolid = 5
    BrokenBroken = 6
    BottsDots = 7
    Grass = 8
    Curb = 9
    NONE = 10


class VehicleControl:
    """carla.VehicleControl."""

    def __init__(self, throttle: float = 0.0, steer: float = 0.0, brake: float = 0.0,
                 hand_brake: bool = False, reverse: bool = False,
                 manual_gear_shift: bool = False, gear: int = 0) -> None:
        self.throttle, self.steer, self.brake = throttle, steer, brake
        self.hand_brake, self.reverse = hand_brake, reverse
        self.manual_gear_shift, self.gear = manual_gear_shift, gear


class WeatherParameters:
    """carla.WeatherParameters with CARLA's preset names as class attributes."""

    PRESETS = ('Default', 'ClearNoon', 'CloudyNoon', 'WetNoon', 'WetCloudyNoon', 'MidRainyNoon',
               'HardRainNoon', 'SoftRainNoon', 'ClearSunset', 'CloudySunset', 'WetSunset',
               'WetCloudySunset', 'MidRainSunset', 'HardRainSunset', 'SoftRainSunset',
               'ClearNight', 'CloudyNight', 'WetNight', 'WetCloudyNight', 'SoftRainNight',
               'MidRainyNight', 'HardRainNight', 'DustStorm')

    def __init__(self, cloudiness: float = 0.0, precipitation: float = 0.0,
                 sun_altitude_angle: float = 45.0, name: str = 'custom') -> None:
        self.cloudiness, self.precipitation = cloudiness, precipitation
        self.sun_altitude_angle = sun_altitude_angle
        self.name = name


for _i, _preset in enumerate(WeatherParameters.PRESETS):
    setattr(WeatherParameters, _preset, WeatherParameters(
        cloudiness=10.0 * (_i % 4), precipitation=0.0 if 'Rain' not in _preset else 50.0,
        sun_altitude_angle=-30.0 if 'Night' in _preset else 45.0, name=_preset))


class WorldSettings:
    """carla.WorldSettings (the fields the bridge and the episode logic read)."""

    def __init__(self, synchronous_mode: bool = False, fixed_delta_seconds: float | None = None,
                 no_rendering_mode: bool = False) -> None:
        self.synchronous_mode = synchronous_mode
        self.fixed_delta_seconds = fixed_delta_seconds
        self.no_rendering_mode = no_rendering_mode


# --------------------------------------------------------------------------- road network


@dataclass
class Road:
    """
    One OpenDRIVE road: a reference line of lines and arcs, lanes of one width, and links.

    ``geometry`` is a list of ``('line', length)`` or ``('arc', length, curvature)`` (curvature
    > 0 turns left, OpenDRIVE's counter-clockwise). ``successor`` / ``predecessor`` name roads
    whose start (successor) or end (predecessor) touches this road's end (start); a list means
    a junction with one connecting road per entry. ``junction`` is the id of the junction this
    road is a connecting road of, -1 otherwise.
    """

    id: int  # noqa: A003, RUF100  (OpenDRIVE's name)
    x: float
    y: float
    hdg: float
    geometry: list
    lanes: tuple[int, ...] = (-1, 1)
    width: float = 3.5
    successor: list[int] = field(default_factory=list)
    predecessor: list[int] = field(default_factory=list)
    junction: int = -1

    @property
    def length(self) -> float:
        return float(sum(g[1] for g in self.geometry))

    def reference(self, s: float) -> tuple[float, float, float]:
        """Reference-line pose (x, y, hdg) at ``s`` in OpenDRIVE's right-handed frame."""
        x, y, hdg = self.x, self.y, self.hdg
        s = min(max(s, 0.0), self.length)
        for g in self.geometry:
            ds = min(s, g[1])
            if g[0] == 'line':
                x, y = x + ds * math.cos(hdg), y + ds * math.sin(hdg)
            else:
                k = g[2]
                x += (math.sin(hdg + k * ds) - math.sin(hdg)) / k
                y -= (math.cos(hdg + k * ds) - math.cos(hdg)) / k
                hdg += k * ds
            s -= ds
            if s <= 0.0:
                break
        return x, y, hdg


def _wrap_deg(angle: float) -> float:
    """Wrap to (-180, 180]."""
    angle = math.fmod(angle, 360.0)
    if angle <= -180.0:
        angle += 360.0
    elif angle > 180.0:
        angle -= 360.0
    return angle


class Waypoint:
    """carla.Waypoint: a point on a lane centre, oriented along the lane's driving direction."""

    _ids = itertools.count(1)

    def __init__(self, carla_map: Map, road: Road, lane_id: int, s: float) -> None:
        self._map, self._road = carla_map, road
        self.road_id, self.section_id, self.lane_id = road.id, 0, lane_id
        self.s = float(s)
        self.lane_width = road.width
        self.lane_type = LaneType.Driving
        self.is_junction = road.junction >= 0
        self.junction_id = road.junction
        self.id = next(Waypoint._ids)
        x, y, hdg = road.reference(self.s)
        offset = math.copysign(abs(lane_id) - 0.5, lane_id) * road.width
        x, y = x - offset * math.sin(hdg), y + offset * math.cos(hdg)
        heading = hdg if lane_id < 0 else hdg + math.pi
        self.transform = Transform(Location(x, -y, 0.0),
                                   Rotation(0.0, _wrap_deg(-math.degrees(heading)), 0.0))

    def next(self, distance: float) -> list[Waypoint]:  # noqa: A003, RUF100  (CARLA's name)
        if not distance > 0.0:
            raise RuntimeError('distance > 0.0')
        return self._map._advance(self._road, self.lane_id, self.s, distance)

    def __repr__(self) -> str:
        return (f'Waypoint(road={self.road_id}, lane={self.lane_id}, s={self.s:.2f}, '
                f'{self.transform!r})')


class Map:
    """carla.Map over a list of :class:`Road` (one lane section per road)."""

    SAMPLE_M = 0.25

    def __init__(self, name: str, roads: list[Road], spawn_spacing_m: float = 25.0) -> None:
        self.name = name
        self.roads = {road.id: road for road in roads}
        self._spawn_spacing = spawn_spacing_m
        samples = []   # (road id, lane id, s, x, y) in CARLA coordinates, for projection
        for road in roads:
            for lane in road.lanes:
                n = max(math.ceil(road.length / self.SAMPLE_M), 1)
                for s in np.linspace(0.0, road.length, n + 1):
                    t = Waypoint(self, road, lane, s).transform.location
                    samples.append((road.id, lane, s, t.x, t.y))
        self._samples = np.array(samples, dtype=np.float64)

    def _advance(self, road: Road, lane: int, s: float, distance: float) -> list[Waypoint]:
        target = s + distance if lane < 0 else s - distance
        if -1e-9 <= target <= road.length + 1e-9:
            return [Waypoint(self, road, lane, min(max(target, 0.0), road.length))]
        left = target - road.length if lane < 0 else -target
        out = []
        for nxt in (road.successor if lane < 0 else road.predecessor):
            nroad = self.roads[nxt]
            if lane not in nroad.lanes:
                continue
            start = 0.0 if lane < 0 else nroad.length
            out.extend(self._advance(nroad, lane, start, left))
        return out

    def get_waypoint(self, location: Location, project_to_road: bool = True,
                     lane_type: int = LaneType.Driving) -> Waypoint | None:
        if lane_type not in (LaneType.Driving, LaneType.Any):
            return None
        d2 = ((self._samples[:, 3] - location.x) ** 2 + (self._samples[:, 4] - location.y) ** 2)
        best = int(np.argmin(d2))
        road_id, lane, s = int(self._samples[best, 0]), int(self._samples[best, 1]), \
            float(self._samples[best, 2])
        road = self.roads[road_id]

        def dist(s_: float) -> float:
            t = Waypoint(self, road, lane, s_).transform.location
            return math.hypot(t.x - location.x, t.y - location.y)

        lo, hi = max(s - self.SAMPLE_M, 0.0), min(s + self.SAMPLE_M, road.length)
        for _ in range(40):                     # exact projection near the best sample
            a, b = lo + (hi - lo) / 3.0, hi - (hi - lo) / 3.0
            lo, hi = (lo, b) if dist(a) <= dist(b) else (a, hi)
        s = (lo + hi) / 2.0
        if not project_to_road and dist(s) > road.width / 2.0:
            return None
        return Waypoint(self, road, lane, s)

    def generate_waypoints(self, distance: float) -> list[Waypoint]:
        """Waypoints at s = 0, d, 2d, ... < lane length on every lane, as CARLA places them."""
        out = []
        for road in self.roads.values():
            n = math.ceil(road.length / distance - 1e-9)
            for lane in road.lanes:
                out.extend(Waypoint(self, road, lane, i * distance) for i in range(n))
        return out

    def get_topology(self) -> list[tuple[Waypoint, Waypoint]]:
        """Pairs (start of a lane, start of one successor lane), one per successor, like CARLA."""
        pairs = []
        for road in self.roads.values():
            for lane in road.lanes:
                start = Waypoint(self, road, lane, 0.0 if lane < 0 else road.length)
                for nxt in (road.successor if lane < 0 else road.predecessor):
                    nroad = self.roads[nxt]
                    if lane in nroad.lanes:
                        pairs.append((start, Waypoint(self, nroad, lane,
                                                      0.0 if lane < 0 else nroad.length)))
        return pairs

    def get_spawn_points(self) -> list[Transform]:
        """Lane-centre poses every ``spawn_spacing_m`` outside junctions, 0.3 m above ground."""
        points = []
        for road in self.roads.values():
            if road.junction >= 0:
                continue
            n = int(road.length // self._spawn_spacing)
            for lane in road.lanes:
                for i in range(n):
                    t = Waypoint(self, road, lane, (i + 0.5) * self._spawn_spacing).transform
                    points.append(Transform(Location(t.location.x, t.location.y, 0.3),
                                            Rotation(0.0, t.rotation.yaw, 0.0)))
        return points

    def to_xodr(self) -> str:
        """Write the roads as OpenDRIVE 1.4 text that the real ``carla.Map`` accepts."""
        lines = ['<?xml version="1.0" standalone="yes"?>', '<OpenDRIVE>',
                 f'  <header revMajor="1" revMinor="4" name="{self.name}" version="1.00" '
                 'north="0" south="0" east="0" west="0"/>']
        junctions: dict[int, list[Road]] = {}
        for road in self.roads.values():
            if road.junction >= 0:
                junctions.setdefault(road.junction, []).append(road)
        for road in self.roads.values():
            lines.append(f'  <road name="r{road.id}" length="{road.length:.6f}" id="{road.id}" '
                         f'junction="{road.junction}">')
            lines.append('    <link>')
            for tag, targets, contact in (('predecessor', road.predecessor, 'end'),
                                          ('successor', road.successor, 'start')):
                if not targets:
                    continue
                jid = self.roads[targets[0]].junction
                if jid >= 0 and road.junction < 0:
                    lines.append(f'      <{tag} elementType="junction" elementId="{jid}"/>')
                else:
                    lines.append(f'      <{tag} elementType="road" elementId="{targets[0]}" '
                                 f'contactPoint="{contact}"/>')
            lines.append('    </link>')
            lines.append('    <planView>')
            s, (x, y, hdg) = 0.0, (road.x, road.y, road.hdg)
            for g in road.geometry:
                shape = '<line/>' if g[0] == 'line' else f'<arc curvature="{g[2]:.9f}"/>'
                lines.append(f'      <geometry s="{s:.6f}" x="{x:.6f}" y="{y:.6f}" '
                             f'hdg="{hdg:.9f}" length="{g[1]:.6f}">{shape}</geometry>')
                s += g[1]
                x, y, hdg = road.reference(s)
            lines.append('    </planView>')
            lines.append('    <lanes>')
            lines.append('      <laneSection s="0.0">')
            for side, ids in (('left', sorted((i for i in road.lanes if i > 0), reverse=True)),
                              ('right', sorted((i for i in road.lanes if i < 0), reverse=True))):
                if not ids:
                    continue
                lines.append(f'        <{side}>')
                for lane in ids:
                    link = ''
                    if road.predecessor:
                        link += f'<predecessor id="{lane}"/>'
                    if road.successor:
                        link += f'<successor id="{lane}"/>'
                    lines.append(
                        f'          <lane id="{lane}" type="driving" level="false">'
                        f'<link>{link}</link><width sOffset="0.0" a="{road.width}" b="0" c="0" '
                        'd="0"/><roadMark sOffset="0" type="solid" weight="standard" '
                        'color="standard" width="0.15"/></lane>')
                lines.append(f'        </{side}>')
            lines.append('        <center><lane id="0" type="none" level="false"><roadMark '
                         'sOffset="0" type="broken" weight="standard" color="standard" '
                         'width="0.15"/></lane></center>')
            lines.append('      </laneSection>')
            lines.append('    </lanes>')
            lines.append('  </road>')
        for jid, connecting in junctions.items():
            lines.append(f'  <junction id="{jid}" name="j{jid}">')
            for i, road in enumerate(connecting):
                lanes = ''.join(f'<laneLink from="{lane}" to="{lane}"/>'
                                for lane in road.lanes if lane < 0)
                lines.append(f'    <connection id="{i}" incomingRoad="{road.predecessor[0]}" '
                             f'connectingRoad="{road.id}" contactPoint="start">{lanes}'
                             '</connection>')
            lines.append('  </junction>')
        lines.append('</OpenDRIVE>')
        return '\n'.join(lines) + '\n'


def ring_roads(straight_m: float = 50.0, radius_m: float = 20.0) -> list[Road]:
    """Return a closed two-way ring (4 straights, 4 left quarter arcs), roads chained 1..8."""
    roads, x, y, hdg = [], 0.0, 0.0, 0.0
    quarter = math.pi / 2.0 * radius_m
    for i in range(8):
        geometry = [('line', straight_m)] if i % 2 == 0 else [('arc', quarter, 1.0 / radius_m)]
        road = Road(id=i + 1, x=x, y=y, hdg=hdg, geometry=geometry,
                    successor=[(i + 1) % 8 + 1], predecessor=[(i - 1) % 8 + 1])
        x, y, hdg = road.reference(road.length)
        roads.append(road)
    return roads


def junction_roads() -> list[Road]:
    """
    Return a one-way fork: road 10 enters junction 100, whose connecting roads go on.

    Connecting road 11 goes straight into road 13; connecting road 12 turns right (radius 15 m)
    into road 14. Only lane -1 exists, so a goal on road 14 is reachable only through road 12.
    """
    r10 = Road(10, 0.0, 0.0, 0.0, [('line', 40.0)], lanes=(-1,), successor=[11, 12])
    r11 = Road(11, 40.0, 0.0, 0.0, [('line', 20.0)], lanes=(-1,), predecessor=[10],
               successor=[13], junction=100)
    turn = math.pi / 2.0 * 15.0
    r12 = Road(12, 40.0, 0.0, 0.0, [('arc', turn, -1.0 / 15.0)], lanes=(-1,), predecessor=[10],
               successor=[14], junction=100)
    x14, y14, h14 = r12.reference(turn)
    r13 = Road(13, 60.0, 0.0, 0.0, [('line', 40.0)], lanes=(-1,), predecessor=[11])
    r14 = Road(14, x14, y14, h14, [('line', 40.0)], lanes=(-1,), predecessor=[12])
    return [r10, r11, r12, r13, r14]


# --------------------------------------------------------------------------- actors and world


class ActorAttribute:
    """carla.ActorAttribute: a string value with typed accessors."""

    def __init__(self, value: str) -> None:
        self._value = str(value)

    def as_int(self) -> int:
        return int(self._value)

    def as_str(self) -> str:
        return self._value

    def __str__(self) -> str:
        return self._value


class ActorBlueprint:
    """carla.ActorBlueprint."""

    def __init__(self, blueprint_id: str, attributes: dict[str, str],
                 extent: tuple[float, float, float] = (2.3, 1.0, 0.75)) -> None:
        self.id = blueprint_id
        self._attributes = {k: ActorAttribute(v) for k, v in attributes.items()}
        self.extent = extent

    def has_attribute(self, name: str) -> bool:
        return name in self._attributes

    def get_attribute(self, name: str) -> ActorAttribute:
        return self._attributes[name]

    def set_attribute(self, name: str, value: str) -> None:
        if name not in self._attributes:
            raise IndexError(f'no attribute {name!r} in blueprint {self.id}')
        self._attributes[name] = ActorAttribute(value)


class BlueprintLibrary:
    """carla.BlueprintLibrary with a few cars and a bicycle (two wheels)."""

    def __init__(self) -> None:
        self._blueprints = [
            ActorBlueprint(bp_id, {'number_of_wheels': wheels, 'role_name': '',
                                   'color': '0,0,0'}, extent)
            for bp_id, wheels, extent in (
                ('vehicle.audi.tt', '4', (2.09, 1.0, 0.69)),
                ('vehicle.tesla.model3', '4', (2.4, 1.08, 0.74)),
                ('vehicle.lincoln.mkz_2020', '4', (2.44, 1.06, 0.76)),
                ('vehicle.diamondback.century', '2', (0.82, 0.19, 0.55)))]

    def filter(self, pattern: str) -> list[ActorBlueprint]:  # noqa: A003, RUF100  (CARLA's name)
        return [ActorBlueprint(bp.id, {k: str(v) for k, v in bp._attributes.items()}, bp.extent)
                for bp in self._blueprints if fnmatch.fnmatch(bp.id, pattern)]

    def find(self, blueprint_id: str) -> ActorBlueprint:
        for bp in self.filter(blueprint_id):
            return bp
        raise IndexError(f'blueprint {blueprint_id!r} not found')


class ActorList(list):
    """carla.ActorList."""

    def filter(self, pattern: str) -> ActorList:  # noqa: A003, RUF100  (CARLA's name)
        return ActorList(a for a in self if fnmatch.fnmatch(a.type_id, pattern))


class Vehicle:
    """carla.Vehicle: pose, target velocity, control and autopilot flag; no physics."""

    def __init__(self, world: World, actor_id: int, blueprint: ActorBlueprint,
                 transform: Transform) -> None:
        self._world = world
        self.id = actor_id
        self.type_id = blueprint.id
        self.attributes = {k: str(v) for k, v in blueprint._attributes.items()}
        self.bounding_box = BoundingBox(Location(0.0, 0.0, blueprint.extent[2]),
                                        Vector3D(*blueprint.extent))
        self._transform = Transform(Location(transform.location.x, transform.location.y,
                                             transform.location.z),
                                    Rotation(transform.rotation.pitch, transform.rotation.yaw,
                                             transform.rotation.roll))
        self._velocity = Vector3D()
        self.angular_velocity = Vector3D()
        self.control = VehicleControl()
        self.autopilot_port: int | None = None
        self.is_alive = True

    def get_transform(self) -> Transform:
        return self._transform

    def get_location(self) -> Location:
        return self._transform.location

    def get_velocity(self) -> Vector3D:
        return self._velocity

    def set_transform(self, transform: Transform) -> None:
        self._transform = Transform(Location(transform.location.x, transform.location.y,
                                             transform.location.z),
                                    Rotation(transform.rotation.pitch, transform.rotation.yaw,
                                             transform.rotation.roll))

    def set_target_velocity(self, velocity: Vector3D) -> None:
        self._velocity = Vector3D(velocity.x, velocity.y, velocity.z)

    def set_target_angular_velocity(self, velocity: Vector3D) -> None:
        self.angular_velocity = Vector3D(velocity.x, velocity.y, velocity.z)

    def apply_control(self, control: VehicleControl) -> None:
        self.control = control

    def set_autopilot(self, enabled: bool = True, tm_port: int = 8000) -> None:
        self.autopilot_port = tm_port if enabled else None

    def destroy(self) -> bool:
        if not self.is_alive:
            return False
        self.is_alive = False
        self._world._actors.pop(self.id, None)
        return True


class World:
    """carla.World: map, settings, weather, actors; ``tick()`` only counts frames."""

    SPAWN_CLEARANCE_M = 2.0

    def __init__(self, carla_map: Map, settings: WorldSettings | None = None) -> None:
        self._map = carla_map
        self._settings = settings if settings is not None else WorldSettings()
        self._weather = WeatherParameters.Default
        self._actors: dict[int, Vehicle] = {}
        self._ids = itertools.count(100)
        self._library = BlueprintLibrary()
        self.frame = 0

    def get_map(self) -> Map:
        return self._map

    def get_settings(self) -> WorldSettings:
        return WorldSettings(self._settings.synchronous_mode, self._settings.fixed_delta_seconds,
                             self._settings.no_rendering_mode)

    def apply_settings(self, settings: WorldSettings) -> int:
        self._settings = WorldSettings(settings.synchronous_mode, settings.fixed_delta_seconds,
                                       settings.no_rendering_mode)
        return self.frame

    def get_weather(self) -> WeatherParameters:
        return self._weather

    def set_weather(self, weather: WeatherParameters) -> None:
        self._weather = weather

    def get_blueprint_library(self) -> BlueprintLibrary:
        return self._library

    def get_actors(self, actor_ids: list[int] | None = None) -> ActorList:
        actors = self._actors.values()
        if actor_ids is not None:
            actors = [a for a in actors if a.id in set(actor_ids)]
        return ActorList(actors)

    def get_actor(self, actor_id: int) -> Vehicle | None:
        return self._actors.get(actor_id)

    def try_spawn_actor(self, blueprint: ActorBlueprint, transform: Transform) -> Vehicle | None:
        """Spawn like CARLA: None when another vehicle's origin is within the clearance."""
        for other in self._actors.values():
            if other.get_location().distance(transform.location) < self.SPAWN_CLEARANCE_M:
                return None
        vehicle = Vehicle(self, next(self._ids), blueprint, transform)
        self._actors[vehicle.id] = vehicle
        return vehicle

    def spawn_actor(self, blueprint: ActorBlueprint, transform: Transform) -> Vehicle:
        vehicle = self.try_spawn_actor(blueprint, transform)
        if vehicle is None:
            raise RuntimeError('Spawn failed because of collision at spawn position')
        return vehicle

    def tick(self) -> int:
        self.frame += 1
        return self.frame


class TrafficManager:
    """carla.TrafficManager: records the settings the episode logic applies."""

    def __init__(self, port: int) -> None:
        self._port = port
        self.synchronous_mode = False
        self.seed: int | None = None
        self.distance_to_leading_vehicle: float | None = None
        self.speed_difference_pct: float | None = None

    def get_port(self) -> int:
        return self._port

    def set_synchronous_mode(self, mode_switch: bool) -> None:
        self.synchronous_mode = bool(mode_switch)

    def set_random_device_seed(self, seed: int) -> None:
        self.seed = int(seed)

    def set_global_distance_to_leading_vehicle(self, distance: float) -> None:
        self.distance_to_leading_vehicle = float(distance)

    def global_percentage_speed_difference(self, percentage: float) -> None:
        self.speed_difference_pct = float(percentage)


class Client:
    """carla.Client bound to one stand-in world."""

    def __init__(self, host: str = '127.0.0.1', port: int = 2000, worker_threads: int = 0,
                 world: World | None = None) -> None:
        self.host, self.port = host, port
        self.timeout: float | None = None
        self._world = world
        self._traffic_managers: dict[int, TrafficManager] = {}

    def set_timeout(self, seconds: float) -> None:
        self.timeout = float(seconds)

    def get_world(self) -> World:
        if self._world is None:
            raise RuntimeError(f'time-out of {self.timeout}s while waiting for the simulator, '
                               f'make sure the simulator is ready and connected to '
                               f'{self.host}:{self.port}')
        return self._world

    def get_trafficmanager(self, port: int = 8000) -> TrafficManager:
        return self._traffic_managers.setdefault(port, TrafficManager(port))

    def get_client_version(self) -> str:
        return '0.9.16-standin'

    def get_server_version(self) -> str:
        return '0.9.16-standin'


def module() -> types.SimpleNamespace:
    """Return the stand-in as a ``carla``-like namespace, for code that takes the module."""
    return types.SimpleNamespace(
        Client=Client, Location=Location, Rotation=Rotation, Transform=Transform,
        Vector3D=Vector3D, LaneType=LaneType, LaneMarkingType=LaneMarkingType,
        VehicleControl=VehicleControl, WeatherParameters=WeatherParameters,
        WorldSettings=WorldSettings, Map=Map, __name__='carla_standin')


# --------------------------------------------------------------------------- carla_msgs

# carla-ros-bridge's carla_msgs/msg definitions (master, CARLA 0.9.13 release), the subset that
# carla_episode_node and the policy node use. Used to build a stand-in interface package when
# the real carla_msgs (built with the bridge) is not installed.
CARLA_MSGS = {
    'CarlaCollisionEvent': (
        'std_msgs/Header header\n'
        'int32 other_actor_id\n'
        'geometry_msgs/Vector3 normal_impulse\n'),
    'CarlaLaneInvasionEvent': (
        'std_msgs/Header header\n'
        'int32[] crossed_lane_markings\n'
        'int32 LANE_MARKING_OTHER=0\n'
        'int32 LANE_MARKING_BROKEN=1\n'
        'int32 LANE_MARKING_SOLID=2\n'),
    'CarlaEgoVehicleControl': (
        'std_msgs/Header header\n'
        'float32 throttle\n'
        'float32 steer\n'
        'float32 brake\n'
        'bool hand_brake\n'
        'bool reverse\n'
        'int32 gear\n'
        'bool manual_gear_shift\n'),
}

_CMAKELISTS = """cmake_minimum_required(VERSION 3.8)
project(carla_msgs)
find_package(ament_cmake REQUIRED)
find_package(rosidl_default_generators REQUIRED)
find_package(std_msgs REQUIRED)
find_package(geometry_msgs REQUIRED)
rosidl_generate_interfaces(${PROJECT_NAME} %s DEPENDENCIES std_msgs geometry_msgs)
ament_export_dependencies(rosidl_default_runtime)
ament_package()
"""

_PACKAGE_XML = """<?xml version="1.0"?>
<package format="3">
  <name>carla_msgs</name>
  <version>0.0.0</version>
  <description>STAND-IN of carla-ros-bridge carla_msgs (subset) for av_td3_ros tests</description>
  <maintainer email="maintainers@av-td3-ros.dev">av_td3_ros maintainers</maintainer>
  <license>MIT</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <buildtool_depend>rosidl_default_generators</buildtool_depend>
  <depend>std_msgs</depend>
  <depend>geometry_msgs</depend>
  <exec_depend>rosidl_default_runtime</exec_depend>
  <member_of_group>rosidl_interface_packages</member_of_group>
  <export><build_type>ament_cmake</build_type></export>
</package>
"""


def _build_carla_msgs(prefix: Path) -> Path:
    """Build the stand-in carla_msgs with colcon under ``prefix``; return its install dir."""
    src = prefix / 'src' / 'carla_msgs'
    (src / 'msg').mkdir(parents=True, exist_ok=True)
    for name, text in CARLA_MSGS.items():
        (src / 'msg' / f'{name}.msg').write_text(text)
    files = ' '.join(f'"msg/{name}.msg"' for name in CARLA_MSGS)
    (src / 'CMakeLists.txt').write_text(_CMAKELISTS % files)
    (src / 'package.xml').write_text(_PACKAGE_XML)
    env = dict(os.environ)
    for var in ('CMAKE_PREFIX_PATH', 'AMENT_PREFIX_PATH'):
        env[var] = os.pathsep.join(p for p in (sys.prefix, env.get(var, '')) if p)
    colcon = shutil.which('colcon') or str(Path(sys.executable).parent / 'colcon')
    result = subprocess.run(
        [colcon, '--log-base', str(prefix / 'log'), 'build', '--base-paths', str(prefix / 'src'),
         '--build-base', str(prefix / 'build'), '--install-base', str(prefix / 'install'),
         '--event-handlers', 'console_cohesion-', 'summary-', 'status-', '--cmake-args',
         '-DBUILD_TESTING=OFF', f'-DPython3_EXECUTABLE={sys.executable}'],
        cwd=prefix, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError('building the carla_msgs stand-in failed:\n'
                           + (result.stdout + result.stderr)[-2000:])
    return prefix / 'install' / 'carla_msgs'


def _load_built(install: Path) -> types.ModuleType:
    """Import a carla_msgs built after this process started (libraries preloaded by path)."""
    import ctypes
    libs = sorted((install / 'lib').glob('lib*.so'))
    for _ in range(len(libs)):          # load order resolves dependencies between them
        failed = []
        for lib in libs:
            try:
                ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
            except OSError:
                failed.append(lib)
        if not failed:
            break
        libs = failed
    site = next((install / 'lib').glob('python3*/site-packages'))
    sys.path.insert(0, str(site))
    return importlib.import_module('carla_msgs.msg')


def carla_msgs_module() -> tuple[types.ModuleType | None, str]:
    """
    Return (carla_msgs.msg, where it came from), or (None, reason) if it cannot be had.

    The real carla_msgs is used when importable; otherwise a stand-in is built once from
    :data:`CARLA_MSGS` with colcon into the temp directory (about 30 s) and reused after.
    """
    try:
        return importlib.import_module('carla_msgs.msg'), 'carla_msgs (installed)'
    except ImportError:
        pass
    if shutil.which('cmake') is None:
        return None, 'carla_msgs is not installed and cmake is missing to build a stand-in'
    digest = hashlib.sha256(repr((sorted(CARLA_MSGS.items()), sys.version, sys.prefix))
                            .encode()).hexdigest()[:12]
    prefix = Path(tempfile.gettempdir()) / f'av_td3_carla_msgs_standin_{digest}'
    install = prefix / 'install' / 'carla_msgs'
    import fcntl
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix / '.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (install / 'share' / 'carla_msgs' / 'package.xml').is_file():
            try:
                _build_carla_msgs(prefix)
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                return None, f'carla_msgs is not installed and the stand-in build failed: {exc}'
    return _load_built(install), f'carla_msgs STAND-IN built in {install}'
