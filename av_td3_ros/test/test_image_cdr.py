"""The zero-copy Image reader against rclpy's own serialisation of the same messages."""

import array

from av_td3_ros.formats.image_cdr import read_image, TruncatedImage, UnsupportedEncapsulation
import numpy as np
import pytest
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image


def _image(frame_id: str, width: int, height: int, encoding: str, channels: int,
           sec: int = 1_700_000_000, nanosec: int = 123_456_789, pad: int = 0) -> Image:
    msg = Image(height=height, width=width, encoding=encoding, step=width * channels + pad)
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
    msg.header.frame_id = frame_id
    rng = np.random.default_rng(width * 7 + height)
    msg.data = array.array('B', rng.integers(0, 256, msg.step * height, np.uint8).tobytes())
    return msg


# frame_id and encoding lengths 0..8 move every later field through all four alignments
@pytest.mark.parametrize('frame_id', ['', 'a', 'ab', 'abc', 'camera', 'rgb_front', 'ego/cam_7'])
@pytest.mark.parametrize('encoding,channels', [('bgra8', 4), ('rgb8', 3), ('mono8', 1),
                                               ('', 1), ('16UC1', 2)])
def test_read_image_matches_the_message(frame_id, encoding, channels):
    msg = _image(frame_id, 13, 5, encoding, channels, pad=3)
    raw = read_image(serialize_message(msg))
    assert raw.stamp_ns == msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
    assert (raw.frame_id, raw.height, raw.width, raw.encoding, raw.step) == (
        frame_id, 5, 13, encoding, msg.step)
    np.testing.assert_array_equal(raw.data, np.frombuffer(msg.data, np.uint8))


def test_read_image_is_zero_copy_and_handles_negative_seconds():
    serialized = serialize_message(_image('cam', 800, 600, 'bgra8', 4, sec=-2, nanosec=5))
    raw = read_image(serialized)
    assert raw.stamp_ns == -2 * 1_000_000_000 + 5
    assert raw.data.size == 800 * 600 * 4
    assert not raw.data.flags.owndata and not raw.data.flags.writeable


def test_read_image_big_endian():
    little = serialize_message(_image('cam', 4, 3, 'mono8', 1))
    # rewrite as CDR_BE: swap every uint32 by re-serialising the fields by hand
    raw = read_image(little)
    parts = [b'\x00\x00\x00\x00']

    def u32(value):
        parts.append(int(value).to_bytes(4, 'big'))

    def text(value):
        encoded = value.encode() + b'\x00'
        u32(len(encoded))
        parts.append(encoded)

    def align4():
        parts.append(b'\x00' * (-len(b''.join(parts)[4:]) % 4))
    u32(raw.stamp_ns // 1_000_000_000)
    u32(raw.stamp_ns % 1_000_000_000)
    text(raw.frame_id)
    align4()
    u32(raw.height)
    u32(raw.width)
    text(raw.encoding)
    parts.append(b'\x00')                           # is_bigendian
    align4()
    u32(raw.step)
    u32(raw.data.size)
    parts.append(raw.data.tobytes())
    big = read_image(b''.join(parts))
    assert (big.stamp_ns, big.frame_id, big.height, big.width, big.encoding, big.step) == (
        raw.stamp_ns, raw.frame_id, raw.height, raw.width, raw.encoding, raw.step)
    np.testing.assert_array_equal(big.data, raw.data)


def test_truncated_and_unknown_representations_are_refused():
    serialized = serialize_message(_image('cam', 16, 8, 'bgr8', 3))
    for cut in (0, 3, 10, 30, len(serialized) - 1):
        with pytest.raises(TruncatedImage):
            read_image(serialized[:cut])
    with pytest.raises(UnsupportedEncapsulation, match='0x0003'):
        read_image(b'\x00\x03' + serialized[2:])     # parameter-list CDR
