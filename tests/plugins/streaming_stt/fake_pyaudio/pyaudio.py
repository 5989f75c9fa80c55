"""A stand-in for PyAudio's microphone input, for running the seed's examples in tests.

``PyAudio().open(...)`` returns a stream whose ``read(n)`` returns the next ``n`` frames of the
wav named by $FAKE_PYAUDIO_WAV (16 kHz mono int16), then silence, blocking like a microphone
does: one read of 1024 frames takes 64 ms (divided by $FAKE_PYAUDIO_SPEED). Only the calls the
seed's examples make exist. The examples import it as ``pyaudio`` ($PYTHONPATH points here).
"""

from __future__ import annotations

import os
import time
import wave

paInt16 = 8


class _InputStream:
    def __init__(self, rate: int) -> None:
        path = os.environ["FAKE_PYAUDIO_WAV"]
        with wave.open(path, "rb") as wav:
            if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (rate, 1, 2):
                raise ValueError(f"{path}: needs {rate} Hz mono int16")
            self._data = wav.readframes(wav.getnframes())
        self._speed = float(os.environ.get("FAKE_PYAUDIO_SPEED", "1"))
        self._rate = rate
        self._pos = 0
        self._started = time.monotonic()
        self._frames = 0

    def read(self, frames: int, exception_on_overflow: bool = True) -> bytes:
        self._frames += frames
        due = self._started + self._frames / self._rate / self._speed
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        chunk = self._data[self._pos:self._pos + 2 * frames]
        self._pos += 2 * frames
        return chunk + b"\x00" * (2 * frames - len(chunk))

    def stop_stream(self) -> None:
        pass

    def close(self) -> None:
        pass


class PyAudio:
    def open(self, format: int, channels: int, rate: int, input: bool = False,
             frames_per_buffer: int = 1024, **_: object) -> _InputStream:
        assert format == paInt16 and channels == 1 and input
        return _InputStream(rate)

    def get_sample_size(self, format: int) -> int:
        return 2

    def terminate(self) -> None:
        pass
