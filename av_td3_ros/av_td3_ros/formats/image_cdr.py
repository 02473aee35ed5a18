"""
Zero-copy reader of a serialized ``sensor_msgs/Image`` (the bytes of a raw subscription).

Why: rclpy's generic deserialisation of an 800x600 bgra8 image costs milliseconds (it builds
the Python message and copies the 1.9 MB pixel array into it; measured:
docs/bench.md#design-measurements); the policy node needs only the header, the size, the
encoding and a read-only view of the pixels. The layout is
fixed by the message definition and OMG CDR (XCDR1, and XCDR2 for final types, which is the same
here because Image has no 8-byte members): after the 4-byte encapsulation header, each primitive
is aligned to its size relative to the end of that header; strings and sequences are a uint32
length followed by their elements (strings count their NUL).
"""

from __future__ import annotations

from dataclasses import dataclass
import struct

import numpy as np

# representation identifiers (first two bytes, big-endian) this reader understands:
# CDR_BE, CDR_LE (XCDR1) and CDR2_BE, CDR2_LE (XCDR2, final types)
_BYTE_ORDERS = {0x0000: '>', 0x0001: '<', 0x0006: '>', 0x0007: '<'}
_HEADER = 4


class SerializedImageError(ValueError):
    """Bytes that are not a readable ``sensor_msgs/Image``."""


class UnsupportedEncapsulation(SerializedImageError):
    """Serialized with a representation this reader does not handle (use rclpy's)."""


class TruncatedImage(SerializedImageError):
    """The serialized bytes end before the message does."""


@dataclass(frozen=True)
class RawImage:
    """The fields of ``sensor_msgs/Image`` the policy needs; ``data`` views the input bytes."""

    stamp_ns: int
    frame_id: str
    height: int
    width: int
    encoding: str
    step: int
    data: np.ndarray

    @classmethod
    def from_message(cls, msg) -> RawImage:
        """Take the same fields from a deserialized ``sensor_msgs/Image`` (the slow path)."""
        stamp = msg.header.stamp
        return cls(stamp.sec * 1_000_000_000 + stamp.nanosec, msg.header.frame_id, msg.height,
                   msg.width, msg.encoding, msg.step, np.frombuffer(msg.data, dtype=np.uint8))


class _Reader:
    def __init__(self, buffer: bytes | memoryview, order: str) -> None:
        self.buffer = buffer
        self.order = order
        self.offset = _HEADER

    def take(self, size: int) -> int:
        start = self.offset
        if start + size > len(self.buffer):
            raise TruncatedImage(f'serialized image ends at byte {len(self.buffer)}, '
                                 f'needs {start + size}')
        self.offset = start + size
        return start

    def uint32s(self, count: int) -> tuple[int, ...]:
        self.offset = _HEADER + ((self.offset - _HEADER + 3) & ~3)
        return struct.unpack_from(f'{self.order}{count}I', self.buffer, self.take(4 * count))

    def octets(self) -> tuple[int, int]:
        """(offset, length) of a uint32-length-prefixed run of bytes."""
        (length,) = self.uint32s(1)
        return self.take(length), length

    def string(self) -> str:
        start, length = self.octets()
        return bytes(self.buffer[start:start + max(length - 1, 0)]).decode('utf-8', 'replace')


def read_image(serialized: bytes | memoryview) -> RawImage:
    """
    Read a serialized ``sensor_msgs/Image`` without copying its pixels.

    Raises UnsupportedEncapsulation for a representation other than plain (X)CDR, and
    TruncatedImage when the bytes end early.
    """
    if len(serialized) < _HEADER:
        raise TruncatedImage(f'serialized image has only {len(serialized)} bytes')
    representation = (serialized[0] << 8) | serialized[1]
    if representation not in _BYTE_ORDERS:
        raise UnsupportedEncapsulation(f'representation 0x{representation:04x}')
    reader = _Reader(serialized, _BYTE_ORDERS[representation])
    sec, nanosec = reader.uint32s(2)
    if sec >= 1 << 31:                          # builtin_interfaces/Time.sec is an int32
        sec -= 1 << 32
    frame_id = reader.string()
    height, width = reader.uint32s(2)
    encoding = reader.string()
    reader.take(1)                              # is_bigendian: 8-bit encodings only here
    (step,) = reader.uint32s(1)
    start, length = reader.octets()
    data = np.frombuffer(serialized, dtype=np.uint8, count=length, offset=start)
    return RawImage(sec * 1_000_000_000 + nanosec, frame_id, height, width, encoding, step, data)
