"""The test page's JavaScript resampler, run in Node (no browser on this machine)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

PAGE = Path(__file__).resolve().parents[3] / "plugins" / "ptt" / "test_page.html"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_resampler_of_the_test_page_keeps_a_tone(tmp_path):
    """The page's JavaScript resampler (48 kHz → 16 kHz) run in Node on a 440 Hz tone."""
    page = PAGE.read_text()
    resampler = re.search(r"class Resampler \{.*?\n\}\n", page, re.S).group(0)
    script = resampler + r"""
const r = new Resampler(48000, 16000), out = [];
for (let c = 0; c < 10; c++) {  // 10 chunks of 128 frames, like an AudioWorklet
  const chunk = new Float32Array(128);
  for (let i = 0; i < 128; i++) chunk[i] = Math.sin(2 * Math.PI * 440 * (c * 128 + i) / 48000);
  out.push(...r.process(chunk));
}
console.log(JSON.stringify(out));
"""
    out = json.loads(subprocess.run(["node", "-e", script], capture_output=True, text=True,
                                    check=True).stdout)
    assert abs(len(out) - 1280 / 3) <= 1
    expected = np.sin(2 * np.pi * 440 * (np.arange(len(out)) * 3 - 1) / 48000)
    assert np.max(np.abs(np.array(out[1:]) - expected[1:])) < 0.02
