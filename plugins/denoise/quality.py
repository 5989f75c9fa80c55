"""Measuring a suppressor (tests and bench/denoise_wer.py): SI-SDR and mixing at a given SNR."""

from __future__ import annotations

import numpy as np

from asrhub.engine import Audio


def si_sdr(reference: Audio, estimate: Audio) -> float:
    """Scale-invariant signal-to-distortion ratio of ``estimate`` against ``reference``, in dB."""
    reference = reference.astype(np.float64)
    estimate = estimate.astype(np.float64)
    target = np.dot(estimate, reference) / np.dot(reference, reference) * reference
    error = estimate - target
    return float(10 * np.log10(np.dot(target, target) / max(np.dot(error, error), 1e-20)))


def mix_at_snr(clean: Audio, noise: Audio, snr_db: float, start: int = 0) -> Audio:
    """``clean`` plus ``noise`` (repeated if short, from ``start``) scaled to ``snr_db``."""
    if len(noise) < start + len(clean):
        noise = np.tile(noise, (start + len(clean)) // len(noise) + 1)
    noise = noise[start: start + len(clean)]
    gain = np.sqrt(np.mean(clean**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return (clean + gain * noise).astype(np.float32)
