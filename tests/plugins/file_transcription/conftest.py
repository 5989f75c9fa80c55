"""Helpers for the file-transcription tests: real recordings from testdata assembled and encoded
(PyAV) into every container the seed lists, the seed's own client, a raw message client."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.util
import json
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from asrhub.testing import manifest, testdata_dir

HERE = Path(__file__).resolve().parent
RATE = 16000

# One LibriVox reader (speaker A) and the speechbrain toy speaker spk2 (speaker B).
READER = ["en/pocketsphinx_librivox_ss01_0870.wav", "en/pocketsphinx_librivox_ss01_0880.wav",
          "en/pocketsphinx_librivox_ss01_0890.wav", "en/pocketsphinx_librivox_ss01_0920.wav",
          "en/pocketsphinx_librivox_ss01_0930.wav"]
OTHER = ["en/speechbrain_spk2_snt1.wav", "en/speechbrain_spk2_snt2.wav", "en/speechbrain_spk2_snt3.wav"]
ENGINES = {"asr": "whisper", "vad": "silero", "speaker": "resemblyzer",
           "whisper": {"model": "tiny.en", "language": "en"}}


def load_doc_client() -> ModuleType:
    """A fresh module of the seed's client (funasr_client.py, the doc's code verbatim); its
    ``print`` goes to ``module.printed``."""
    spec = importlib.util.spec_from_file_location("funasr_client_copy", HERE / "funasr_client.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    printed: list[str] = []
    module.print = lambda *args, **kw: printed.append(" ".join(str(a) for a in args))  # type: ignore[attr-defined]
    module.printed = printed  # type: ignore[attr-defined]
    return module


def clip(name: str) -> np.ndarray:
    audio, rate = sf.read(testdata_dir() / name, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if rate != RATE:
        mono = soxr.resample(mono, rate, RATE)
    return np.ascontiguousarray(mono, dtype=np.float32)


def reference(*names: str) -> str:
    rows = manifest()
    return " ".join(rows[name]["transcript"] for name in names)


def joined(names: list[str], gap_s: float = 1.0) -> np.ndarray:
    """Clips one after another with a pause (low noise, not digital silence) between them."""
    rng = np.random.default_rng(7)
    parts: list[np.ndarray] = []
    for name in names:
        parts.append(clip(name))
        parts.append((rng.standard_normal(int(gap_s * RATE)) * 1e-4).astype(np.float32))
    return np.concatenate(parts)


def write_wav(path: Path, audio: np.ndarray, rate: int = RATE) -> Path:
    sf.write(str(path), audio, rate, subtype="PCM_16")
    return path


# container extension → (PyAV format, codec, sample rate, sample format)
ENCODINGS: dict[str, tuple[str | None, str, int, str]] = {
    "mp3": ("mp3", "libmp3lame", 44100, "fltp"),
    "m4a": ("ipod", "aac", 44100, "fltp"),
    "aac": ("adts", "aac", 22050, "fltp"),
    "flac": ("flac", "flac", 48000, "s16"),
    "ogg": ("ogg", "vorbis", 44100, "fltp"),
    "opus": ("opus", "libopus", 48000, "s16"),
}


def encode(audio: np.ndarray, path: Path, *, container: str | None = None, codec: str | None = None,
           rate: int | None = None, sample_format: str | None = None, channels: int = 1,
           bit_rate: int | None = None, noise: float = 0.0, with_video: bool = False) -> Path:
    """Encode 16 kHz mono float audio into ``path`` with PyAV (FFmpeg)."""
    import av

    ext = path.suffix.lstrip(".")
    default = ENCODINGS.get(ext, (None, "aac", 44100, "fltp"))
    container = container or default[0]
    codec, rate, sample_format = codec or default[1], rate or default[2], sample_format or default[3]
    if codec == "vorbis":
        channels = max(channels, 2)  # FFmpeg's own Vorbis encoder only does stereo
    signal = soxr.resample(audio, RATE, rate).astype(np.float32) if rate != RATE else audio
    rng = np.random.default_rng(1)
    planes = np.stack([signal + noise * rng.standard_normal(len(signal)).astype(np.float32)
                       for _ in range(channels)])
    planes = np.clip(planes, -1.0, 1.0)
    if sample_format.startswith("s32"):
        planes = (planes * (2**31 - 256)).astype(np.int32)
    elif sample_format.startswith("s16"):
        planes = (planes * 32767).astype(np.int16)
    layout = "mono" if channels == 1 else "stereo" if channels == 2 else f"{channels}c"
    packed = not sample_format.endswith("p")
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        stream.codec_context.format = sample_format
        if codec == "vorbis":
            stream.codec_context.options = {"strict": "experimental"}
        if bit_rate:
            stream.bit_rate = bit_rate
        video = None
        if with_video:
            video = out.add_stream("mpeg4", rate=5)
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        size = stream.codec_context.frame_size or 4096
        for start in range(0, planes.shape[1], size):
            block = planes[:, start:start + size]
            array = block.T.reshape(1, -1) if packed else block
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(array), format=sample_format,
                                               layout=layout)
            frame.sample_rate = rate
            frame.pts, frame.time_base = start, Fraction(1, rate)  # Ogg granules come from these
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
        if video is not None:
            seconds = len(audio) / RATE
            for index in range(int(seconds * 5)):
                picture = np.full((48, 64, 3), (index * 9) % 255, dtype=np.uint8)
                vframe = av.VideoFrame.from_ndarray(picture, format="rgb24")
                vframe.pts = index
                for packet in video.encode(vframe):
                    out.mux(packet)
            for packet in video.encode(None):
                out.mux(packet)
    return path


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def msg(kind: str, **data: Any) -> str:
    return json.dumps({"type": kind, "data": data})


def upload_request(data: bytes, name: str = "a.wav", *, chunk_size: int = 0, **extra: Any) -> str:
    fields: dict[str, Any] = {"file_name": name, "file_size": len(data), "file_hash": md5(data)}
    if chunk_size:
        fields.update(upload_mode="chunked", chunk_size=chunk_size,
                      total_chunks=-(-len(data) // chunk_size))
    fields.update(extra)
    return msg("upload_request", **fields)


def chunk_msg(task_id: str, data: bytes, index: int, chunk_size: int, *, total: int | None = None,
              bad_hash: bool = False) -> str:
    part = data[index * chunk_size:(index + 1) * chunk_size]
    total = total if total is not None else -(-len(data) // chunk_size)
    return msg("upload_chunk", task_id=task_id, chunk_index=index, chunk_size=len(part),
               chunk_hash=md5(part + b"x") if bad_hash else md5(part),
               chunk_data=base64.b64encode(part).decode(), is_last=index == total - 1)


def data_msg(task_id: str, data: bytes) -> str:
    return msg("upload_data", task_id=task_id, file_data=base64.b64encode(data).decode())


class RawClient:
    """A plain ``websockets`` client speaking the protocol message by message."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    @classmethod
    async def connect(cls, url: str) -> RawClient:
        import websockets

        ws = await websockets.connect(url, max_size=10 * 1024 * 1024)
        client = cls(ws)
        welcome = await client.recv()
        assert welcome["type"] == "connected", welcome
        return client

    async def send(self, text: str) -> None:
        await self.ws.send(text)

    async def recv(self, timeout: float = 60.0) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def ask(self, text: str, timeout: float = 60.0) -> dict[str, Any]:
        await self.send(text)
        return await self.recv(timeout)

    async def until(self, kind: str, timeout: float = 120.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Messages up to the first of type ``kind`` (returned), and all seen before it."""
        seen: list[dict[str, Any]] = []
        while True:
            message = await self.recv(timeout)
            if message["type"] == kind:
                return message, seen
            if message["type"] == "error" and kind != "error":
                raise AssertionError(f"error while waiting for {kind}: {message}")
            seen.append(message)

    async def close(self) -> None:
        await self.ws.close()
