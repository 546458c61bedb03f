"""Audio made to hurt: WAV headers that lie, compressed hours, and a process's memory.

Used by the STT tests (memory stays bounded, errors come at once) and the fuzz suite.
"""

from __future__ import annotations

import struct

import av
import numpy as np


def wav(rate: int, data: bytes = b"", channels: int = 1, bits: int = 16, data_size: int | None = None,
        junk_chunks: int = 0) -> bytes:
    """A PCM WAV file whose header says what we like: `data_size` may announce more than
    `data` holds, and `junk_chunks` empty chunks may come before `fmt `."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits)
    body = (b"junk" + struct.pack("<I", 0)) * junk_chunks
    body += b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data) if data_size is None else data_size) + data
    return b"RIFF" + struct.pack("<I", (4 + len(body)) & 0xFFFFFFFF) + b"WAVE" + body


class _Sink:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)


def flac_silence(seconds: int, rate: int = 8_000) -> bytes:
    """`seconds` of silence as FLAC: an hour is about 650 KB (and 230 MB once decoded to
    16 kHz float32)."""
    sink = _Sink()
    ten_seconds = np.zeros((1, rate * 10), dtype="<i2")
    with av.open(sink, mode="w", format="flac") as out:
        stream = out.add_stream("flac", rate=rate)
        stream.layout = "mono"
        for i in range(seconds // 10):
            frame = av.AudioFrame.from_ndarray(ten_seconds, format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, i * rate * 10
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return b"".join(sink.parts)


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS), in MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")
