"""The CAM++ speaker engine (plugins/funasr/campplus.py) loads through FunASR's runtime and
embeds real audio, with a tiny CAM++ model these tests build (no download; fresh weights, so
only shapes and behaviour are checked, never speaker decisions)."""

from __future__ import annotations

import numpy as np
import pytest

from asrhub.audio import decode_file
from asrhub.engine import EngineError
from asrhub.testing import make_hub, testdata_dir


def test_campplus_engine_embeds_with_a_local_model(tiny_models):
    hub = make_hub({"engines": {"speaker": "campplus",
                                "campplus": {"model": str(tiny_models["spk"]), "ncpu": 1}}}, only=[])
    engine = hub.engine_sync("speaker")
    assert engine.name == "campplus" and engine.model_name == tiny_models["spk"].name
    audio = decode_file(testdata_dir() / "en/speechbrain_spk1_snt1.wav")
    first, again = engine.embed(audio), engine.embed(audio)
    assert first.shape == (engine.dim,) and first.dtype == np.float32
    assert abs(float(np.linalg.norm(first)) - 1.0) < 1e-5
    assert np.allclose(first, again, atol=1e-5), "same audio, same embedding"
    with pytest.raises(EngineError, match="too little audio"):
        engine.embed(np.zeros(100, np.float32))
    hub.unload_engines()
