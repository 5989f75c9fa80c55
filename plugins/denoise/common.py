"""What both noise suppressors share: input checking and the whole-recording path."""

from __future__ import annotations

import numpy as np

from asrhub.engine import Audio, DenoiseStream

EMPTY = np.zeros(0, dtype=np.float32)


def as_mono(pcm: Audio) -> Audio:
    """The hub's audio type (1-D float32); anything else is a caller's bug."""
    audio = np.asarray(pcm, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"denoiser expects mono 1-D float32 audio, got shape {audio.shape}")
    return audio


def denoise_with_stream(stream: DenoiseStream, audio: Audio) -> Audio:
    """Run a whole recording through a fresh stream. The streams drop their own delay, so the
    result is aligned with the input and has its length."""
    audio = as_mono(audio)
    out = np.concatenate([stream.process(audio), stream.flush()])
    assert len(out) == len(audio), (len(out), len(audio))
    return out


def concat(parts: list[Audio]) -> Audio:
    return np.concatenate(parts).astype(np.float32, copy=False) if parts else EMPTY


class Aligner:
    """Turns a model's delayed output into output aligned with the input.

    The first ``delay`` samples a model emits belong to no input sample and are dropped; from
    then on output sample ``i`` is the denoised input sample ``i``. Output never runs ahead of
    the input received, and at the end it is cut to exactly the input's length.
    """

    def __init__(self, delay: int) -> None:
        self.delay = delay
        self.received = 0
        self.emitted = 0
        self._to_skip = delay

    def received_input(self, n: int) -> None:
        self.received += n

    def emit(self, model_out: Audio, *, final: bool = False) -> Audio:
        if self._to_skip:
            dropped = min(self._to_skip, len(model_out))
            model_out = model_out[dropped:]
            self._to_skip -= dropped
        out = model_out[: max(0, self.received - self.emitted)]
        if final and self.emitted + len(out) < self.received:
            # the model gave back less than it was fed (cannot happen with enough padding)
            out = np.concatenate([out, np.zeros(self.received - self.emitted - len(out), np.float32)])
        self.emitted += len(out)
        return out.astype(np.float32, copy=False)
