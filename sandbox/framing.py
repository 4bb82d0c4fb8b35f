"""Length-prefixed frames over the worker's stdin/stdout pipes, for both ends of the pipe.

A frame is a 4-byte big-endian length and that many bytes: a JSON object for messages, or raw bytes for
the pieces of a context that follow a `load` message (ended by an empty frame) and for the texts a worker
sends when the parent asks for them (see sandbox/protocol.py). Large texts are thus never JSON-encoded,
and the parent never holds a batch of prompts twice (decoding one big JSON frame takes twice its size).
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:  # the worker imports this module too, and has no use for asyncio
    import asyncio

HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 256 * 2**20  # bounds what one message can make the other side allocate
# What a worker's JSON messages may hold: the largest is a block result with its output and an answer.
MAX_MESSAGE_BYTES = 32 * 2**20
READ_CHUNK = 2**20


class FrameError(Exception):
    """Bytes that are not a valid frame: oversized, or not a JSON object."""


def encode(message: dict[str, Any]) -> list[bytes]:
    """The frame as [header, payload] (no concatenation: payloads can be large)."""
    payload = orjson.dumps(message)
    if len(payload) > MAX_FRAME_BYTES:
        raise FrameError(f"message of {len(payload):,} bytes exceeds the {MAX_FRAME_BYTES:,}-byte limit")
    return [HEADER.pack(len(payload)), payload]


def raw_frame(data: bytes) -> list[bytes]:
    return [HEADER.pack(len(data)), data]


def decode(payload: bytes | bytearray | memoryview) -> dict[str, Any]:
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        raise FrameError(f"frame is not JSON: {error}") from None
    if not isinstance(message, dict):
        raise FrameError("frame is not a JSON object")
    return message


def frame_size(header: bytes | bytearray, limit: int = MAX_FRAME_BYTES) -> int:
    (size,) = HEADER.unpack(header)
    if size > limit:
        raise FrameError(f"frame of {size:,} bytes exceeds the {limit:,}-byte limit")
    return size


async def read_frame(reader: asyncio.StreamReader, expected: int | None = None) -> bytearray:
    """The next frame's payload: a JSON message of at most MAX_MESSAGE_BYTES, or a raw frame of exactly
    `expected` bytes (a size the parent agreed to before asking for it). IncompleteReadError when the pipe
    closes (the worker is gone).

    Read piece by piece into one buffer: `readexactly(size)` would first grow the reader's own buffer to
    the whole frame and then copy it, holding a large payload twice."""
    size = frame_size(await reader.readexactly(HEADER.size),
                      MAX_MESSAGE_BYTES if expected is None else expected)
    if expected is not None and size != expected:
        raise FrameError(f"frame of {size:,} bytes where {expected:,} were announced")
    payload = bytearray(size)
    done = 0
    while done < size:
        piece = await reader.readexactly(min(READ_CHUNK, size - done))
        payload[done:done + len(piece)] = piece
        done += len(piece)
    return payload


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any]:
    return decode(await read_frame(reader))


class BlockingChannel:
    """The worker's end: blocking reads and writes on raw file descriptors."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._read_fd = read_fd
        self._write_fd = write_fd

    def read_exact(self, size: int) -> bytearray:
        """Exactly `size` bytes; EOFError when the parent closed the pipe."""
        buffer = bytearray(size)
        view = memoryview(buffer)
        done = 0
        while done < size:
            count = os.readv(self._read_fd, [view[done:done + READ_CHUNK]])
            if count == 0:
                raise EOFError("the parent closed the pipe")
            done += count
        return buffer

    def receive(self) -> dict[str, Any]:
        return decode(self.receive_raw())

    def receive_raw(self) -> bytearray:
        return self.read_exact(frame_size(self.read_exact(HEADER.size)))

    def send(self, message: dict[str, Any]) -> None:
        self._write(encode(message))

    def send_raw(self, data: bytes) -> None:
        if len(data) > MAX_FRAME_BYTES:
            raise FrameError(f"{len(data):,} bytes exceed the {MAX_FRAME_BYTES:,}-byte frame limit")
        self._write(raw_frame(data))

    def _write(self, parts: list[bytes]) -> None:
        for part in parts:
            view = memoryview(part)
            while view:
                view = view[os.write(self._write_fd, view):]
