"""Whisper's log-mel features, computed a block of frames at a time.

faster-whisper's :class:`~faster_whisper.feature_extractor.FeatureExtractor` takes the STFT of
the whole input at once: for a 120 s file piece its frames, spectrum and magnitudes take about
100 MB for a moment, and with two pieces decoded side by side (:func:`asrhub.pieces.transcribe_file`)
that was most of the peak memory of `asrhub transcribe`. :class:`BlockFeatureExtractor` gives
the same features (the same frames, window, FFT and mel filters; only the spectrum of
:data:`BLOCK_FRAMES` frames is held at once, about 10 MB), so memory no longer grows with the
length of the input beyond the 80 × frames result itself. The clamp to the loudest frame minus
8 dB is over the whole input, as before.
"""

from __future__ import annotations

import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor

BLOCK_FRAMES = 3000  # 30 s of frames per STFT


class BlockFeatureExtractor(FeatureExtractor):
    """faster-whisper's feature extractor, one block of frames at a time (see the module)."""

    def __call__(self, waveform: np.ndarray, padding: int = 160,
                 chunk_length: int | None = None) -> np.ndarray:
        if chunk_length is not None:
            self.n_samples = chunk_length * self.sampling_rate
            self.nb_max_frames = self.n_samples // self.hop_length
        waveform = np.asarray(waveform, dtype=np.float32).reshape(-1)
        if padding:
            waveform = np.pad(waveform, (0, padding))
        half = self.n_fft // 2
        padded = np.pad(waveform, (half, half), mode="reflect")  # the STFT's centring
        frames = 1 + (len(padded) - self.n_fft) // self.hop_length
        kept = frames - 1  # faster-whisper drops the last frame
        window = np.hanning(self.n_fft + 1)[:-1].astype("float32")
        mel = np.empty((self.mel_filters.shape[0], max(0, kept)), dtype=np.float32)
        for first in range(0, kept, BLOCK_FRAMES):
            last = min(kept, first + BLOCK_FRAMES)
            part = padded[first * self.hop_length:(last - 1) * self.hop_length + self.n_fft]
            spectrum = self.stft(part, self.n_fft, self.hop_length, window=window, center=False,
                                 return_complex=True).astype("complex64")
            mel[:, first:last] = self.mel_filters @ (np.abs(spectrum) ** 2)
        log_spec = np.log10(np.clip(mel, a_min=1e-10, a_max=None))
        log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
        return (log_spec + 4.0) / 4.0
