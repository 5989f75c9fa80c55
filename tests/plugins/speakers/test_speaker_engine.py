"""Speaker embeddings on real recordings (the real Resemblyzer encoder) and matching."""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import numpy as np
import pytest

from asrhub.audio import decode_file
from asrhub.config import ConfigError
from asrhub.engine import EngineError, ModelNotAvailable, SpeakerEngine, Voiceprint, cosine
from asrhub.testing import make_hub
from asrhub_plugins.funasr.campplus import CampPlusSettings, resolve_model
from asrhub_plugins.speakers.matching import EngineMismatch, Match, identify, verify
from asrhub_plugins.speakers.resemblyzer_engine import CALIBRATED_THRESHOLD
from asrhub_plugins.speakers.store import JsonVoiceprintStore


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> SpeakerEngine:
    state = tmp_path_factory.mktemp("state")
    return make_hub({"server": {"state_dir": str(state)}}, only=[]).engine_sync("speaker")


@pytest.fixture(scope="module")
def embed(engine: SpeakerEngine, testdata: Path):
    cache: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = engine.embed(decode_file(testdata / name))
        return cache[name]

    return get


def speaker_pairs(testdata: Path) -> list[tuple[str, str, bool]]:
    with open(testdata / "SPEAKER_PAIRS.tsv", encoding="utf-8") as fh:
        return [(r["file_a"], r["file_b"], r["label"] == "same") for r in csv.DictReader(fh, delimiter="\t")]


def test_default_engine_is_resemblyzer(engine: SpeakerEngine) -> None:
    assert isinstance(engine, SpeakerEngine)
    assert (engine.name, engine.dim) == ("resemblyzer", 256)
    assert engine.default_threshold == CALIBRATED_THRESHOLD


def test_embedding_is_a_unit_vector(embed) -> None:
    e = embed("en/speechbrain_spk1_snt1.wav")
    assert e.shape == (256,) and e.dtype == np.float32
    assert abs(float(np.linalg.norm(e)) - 1.0) < 1e-5


def test_calibrated_threshold_separates_the_real_pairs(embed, engine, testdata: Path) -> None:
    pairs = speaker_pairs(testdata)
    assert sum(same for *_, same in pairs) >= 3 and sum(not same for *_, same in pairs) >= 3
    for a, b, same in pairs:
        score = cosine(embed(a), embed(b))
        if same:
            assert score >= engine.default_threshold, (a, b, score)
        else:
            assert score < engine.default_threshold, (a, b, score)


def test_identify_enrolled_speakers_from_their_test_clips(embed, engine, tmp_path: Path) -> None:
    store = JsonVoiceprintStore(tmp_path / "speakers.json")
    for who in ("fangjun", "leijun", "liudehua"):
        store.put(Voiceprint(who, who, embed(f"zh/srdata_enroll_{who}-sr-1.wav"), 0.0, 3.0, engine.name))
    tests = {"fangjun": [1, 2], "leijun": [1, 2, 3], "liudehua": [1, 2]}
    for who, numbers in tests.items():
        for n in numbers:
            match = identify(embed(f"zh/srdata_test_{who}-test-sr-{n}.wav"), store,
                             engine.default_threshold, engine=engine.name)
            assert match is not None and match.speaker_id == who, (who, n, match)
    # an English speaker is nobody enrolled
    assert identify(embed("en/speechbrain_spk1_snt2.wav"), store, engine.default_threshold) is None
    vp = store.get("leijun")
    assert vp is not None
    result = verify(embed("zh/srdata_test_leijun-test-sr-2.wav"), vp, engine.default_threshold)
    assert result.accepted and result.score >= result.threshold
    assert not verify(embed("zh/srdata_test_liudehua-test-sr-1.wav"), vp, engine.default_threshold).accepted


def test_silence_is_refused(engine: SpeakerEngine, testdata: Path) -> None:
    with pytest.raises(EngineError, match="too little speech"):
        engine.embed(np.zeros(32000, np.float32))
    with pytest.raises(EngineError, match="too little speech"):
        engine.embed(np.zeros(0, np.float32))
    with pytest.raises(EngineError, match="too little speech"):  # 0.3 s of real speech
        engine.embed(decode_file(testdata / "en" / "speechbrain_spk1_snt1.wav")[8000:12800])
    with pytest.raises(ValueError, match="mono"):
        engine.embed(np.zeros((2, 32000), np.float32))


def test_embeddings_from_threads_agree(engine: SpeakerEngine, embed, testdata: Path) -> None:
    names = ["en/speechbrain_spk2_snt1.wav", "en/speechbrain_spk1_snt4.wav"]
    audio = [decode_file(testdata / n) for n in names]
    results: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, engine.embed(audio[i])))
               for i in range(len(audio))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, name in enumerate(names):
        np.testing.assert_allclose(results[i], embed(name), atol=1e-5)


def test_threshold_setting(tmp_path: Path) -> None:
    hub = make_hub({"engines": {"resemblyzer": {"threshold": 0.8}}}, only=[])
    assert hub.settings_for("speaker", "resemblyzer").threshold == 0.8
    with pytest.raises(ConfigError, match="threshold"):
        make_hub({"engines": {"resemblyzer": {"threshold": 2}}}, only=[])


# ----------------------------------------------------------------------- matching


def unit(seed: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def test_identify_picks_the_best_match_above_threshold() -> None:
    a, b = unit(1), unit(2)
    prints = [Voiceprint("a", "A", a, 0, 1, "x"), Voiceprint("b", "B", b, 0, 1, "x"),
              Voiceprint("c", "C", unit(3, dim=4), 0, 1, "x")]  # another dimension: skipped
    probe = (0.9 * a + 0.1 * b) / np.linalg.norm(0.9 * a + 0.1 * b)
    match = identify(probe, prints, 0.5)
    assert isinstance(match, Match) and match.speaker_id == "a" and match.name == "A"
    assert match.score == pytest.approx(cosine(probe, a))
    assert identify(probe, prints, match.score + 1e-3) is None
    assert identify(probe, prints, 0.5, engine="other") is None
    assert identify(probe, [], 0.0) is None


def test_verify_refuses_another_engines_voiceprint() -> None:
    vp = Voiceprint("a", "A", unit(1, dim=192), 0, 1, "campplus")
    with pytest.raises(EngineMismatch, match="enrol the speaker again"):
        verify(unit(1, dim=256), vp, 0.5)


# ----------------------------------------------------------------------- campplus


def test_campplus_says_how_to_provide_the_model(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "cache"))
    hub = make_hub({"engines": {"speaker": "campplus"}}, only=[])
    with pytest.raises(ModelNotAvailable) as info:
        hub.engine_sync("speaker")
    message = str(info.value)
    assert "iic/speech_campplus_sv_zh-cn_16k-common" in message
    assert "modelscope download" in message and "[engines.campplus]" in message
    assert str(tmp_path / "cache") in message
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(ModelNotAvailable):
        resolve_model(str(empty))


def test_campplus_finds_a_model_in_the_modelscope_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path))
    model = tmp_path / "models" / "iic" / "speech_eres2netv2_sv_zh-cn_16k-common"
    model.mkdir(parents=True)
    (model / "configuration.json").write_text("{}")
    assert resolve_model("iic/speech_eres2netv2_sv_zh-cn_16k-common") == model
    assert resolve_model(str(model)) == model
    with pytest.raises(ConfigError, match="ncpu"):
        make_hub({"engines": {"campplus": {"ncpu": 0}}}, only=[])
    assert CampPlusSettings().threshold == 0.3


def test_equal_error_rate() -> None:
    from asrhub_plugins.speakers.calibrate import equal_error_rate

    separable = equal_error_rate([0.8, 0.9, 0.7], [0.2, 0.5, 0.6])
    assert separable.eer == 0.0 and separable.interval == (0.6, 0.7)
    assert separable.threshold == pytest.approx(0.65)
    overlapping = equal_error_rate([0.5, 0.8, 0.9, 0.95], [0.1, 0.2, 0.3, 0.6])
    assert overlapping.eer == 0.25  # one of four either way around 0.5-0.6
    assert 0.3 < overlapping.threshold <= 0.6
