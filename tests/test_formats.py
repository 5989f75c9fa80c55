"""Subtitles people can read: SRT/VTT cues cut at Whisper's word timestamps on real
recordings (tiny.en), at most ~7 s and two lines of 42 columns, never across a speaker change;
`asrhub transcribe --format srt|vtt` asks the engine for word timestamps and obeys the same
limits."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrhub.audio import decode_file
from asrhub.engine import Segment, Transcript, Word
from asrhub.formats import MAX_CUE_S, MAX_LINE_WIDTH, cues_of, to_srt, to_vtt, width
from asrhub.testing import make_hub, manifest, wer

SAMPLE_RATE = 16000
# Five consecutive LibriVox utterances of one reader: ~26 s, sentences of up to 87 characters.
READING = [f"en/pocketsphinx_librivox_ss01_{n}.wav" for n in ("0870", "0880", "0890", "0920", "0930")]
# Two speakers taking turns, 0.3 s apart (shorter than the pause that would end a cue anyway).
TURNS = ["en/speechbrain_spk1_snt1.wav", "en/speechbrain_spk2_snt1.wav", "en/speechbrain_spk1_snt2.wav",
         "en/speechbrain_spk2_snt2.wav", "en/speechbrain_spk1_snt3.wav", "en/speechbrain_spk2_snt3.wav"]
SRT_CUE = re.compile(r"(\d+)\n(\d\d:\d\d:\d\d[,.]\d\d\d) --> (\d\d:\d\d:\d\d[,.]\d\d\d)\n(.+?)(?:\n\n|\n?$)", re.S)


def seconds(clock: str) -> float:
    h, m, s = clock.replace(",", ".").split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def concatenate(testdata: Path, names: list[str], gap_s: float) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The clips one after another with ``gap_s`` of silence; each clip's (start, end)."""
    parts, spans, at = [], [], 0.0
    gap = np.zeros(int(gap_s * SAMPLE_RATE), np.float32)
    for name in names:
        clip = decode_file(testdata / name)
        spans.append((at, at + len(clip) / SAMPLE_RATE))
        parts += [clip, gap]
        at += (len(clip) + len(gap)) / SAMPLE_RATE
    return np.concatenate(parts), spans


@pytest.fixture(scope="module")
def engine():
    hub = make_hub({"engines": {"whisper": {"model": "tiny.en"}}})
    yield hub.engine_sync("asr")
    hub.unload_engines()


@pytest.fixture(scope="module")
def reading(engine, testdata) -> Transcript:
    audio, _ = concatenate(testdata, READING, 0.4)
    return engine.transcribe(audio, word_timestamps=True)


def assert_readable(cues: list[tuple[float, float, str]]) -> None:
    previous_end = 0.0
    for start, end, text in cues:
        assert 0 < end - start <= MAX_CUE_S + 1e-6, (start, end, text)
        assert start >= previous_end - 1e-6, ("cues overlap", start, previous_end, text)
        lines = text.split("\n")
        assert 1 <= len(lines) <= 2, text
        assert all(0 < width(line) <= MAX_LINE_WIDTH for line in lines), text
        previous_end = end


def words(text: str) -> list[str]:
    return re.sub(r"<[^>]+>", " ", text).split()


def test_raw_whisper_segments_break_the_limits(reading):
    """The recordings are a real test: one segment per cue would break the limits."""
    assert all(seg.words for seg in reading.segments)
    assert any(width(seg.text.strip()) > 2 * MAX_LINE_WIDTH or seg.end - seg.start > MAX_CUE_S
               for seg in reading.segments), [seg.text for seg in reading.segments]


def test_cues_from_word_timestamps_meet_the_limits(reading):
    cues = cues_of(reading)
    assert_readable([(c.start, c.end, c.text) for c in cues])
    # every word is shown once, in order, within its own time
    shown = [w for c in cues for w in words(c.text)]
    spoken = [w for seg in reading.segments for w in seg.words]
    assert shown == "".join(w.word for w in spoken).split()  # Whisper's pieces ("ill", "-disposed")
    for cue in cues:
        inside = [w for w in spoken if cue.start - 1e-6 <= (w.start + w.end) / 2 <= cue.end + 1e-6]
        assert "".join(w.word for w in inside).split() == words(cue.text), cue
    assert wer(" ".join(manifest()[n]["transcript"] for n in READING), " ".join(shown)) <= 0.25
    # a sentence that ends closes its cue: no cue runs on past a full stop
    for cue in cues:
        body = cue.text.replace("\n", " ")
        for stop in re.finditer(r"\w{3,}[.?!] ", body):
            assert stop.end() >= len(body), cue.text


def test_srt_and_vtt_documents_meet_the_limits(reading):
    srt = to_srt(reading)
    cues = [(seconds(a), seconds(b), text.strip()) for _, a, b, text in SRT_CUE.findall(srt)]
    assert len(cues) == srt.count(" --> ") >= 5
    assert_readable(cues)
    vtt = to_vtt(reading)
    assert vtt.startswith("WEBVTT\n\n")
    body = vtt.split("\n\n", 1)[1]
    vtt_cues = [(seconds(a), seconds(b), text.strip())
                for a, b, text in re.findall(r"(\S+) --> (\S+)\n(.+?)(?:\n\n|\n?$)", body, re.S)]
    assert vtt_cues == cues


def test_a_speaker_change_always_starts_a_new_cue(engine, testdata):
    audio, spans = concatenate(testdata, TURNS, 0.3)
    heard = engine.transcribe(audio, word_timestamps=True)
    all_words = [w for seg in heard.segments for w in seg.words]

    def turn_of(w: Word) -> int:
        mid = (w.start + w.end) / 2
        return min(range(len(spans)), key=lambda i: 0 if spans[i][0] <= mid <= spans[i][1]
                   else min(abs(mid - spans[i][0]), abs(mid - spans[i][1])))

    # Who spoke is known here (each clip is one speaker): one segment per turn, as diarization
    # hands them to the formatter.
    # Words without punctuation (as FunASR gives them), so that only the speaker rule can
    # separate one turn from the next.
    all_words = [Word(w.start, w.end, w.word.rstrip(".,?!"), w.probability) for w in all_words]
    segments = []
    for i in range(len(spans)):
        mine = [w for w in all_words if turn_of(w) == i]
        if mine:
            segments.append(Segment(mine[0].start, mine[-1].end, "".join(w.word for w in mine).strip(),
                                    mine, speaker=f"speaker_{i % 2}"))
    assert len(segments) >= 5
    transcript = Transcript(heard.text, "en", len(audio) / SAMPLE_RATE, segments)
    assert len({w.word for w in all_words}) > 10
    # The turns are short: without the speaker rule they would share cues.
    anonymous = Transcript(heard.text, "en", transcript.duration,
                           [Segment(s.start, s.end, s.text, s.words) for s in segments])
    assert len(cues_of(anonymous)) < len(cues_of(transcript))
    srt = to_srt(transcript, speaker_tags=True)
    cues = SRT_CUE.findall(srt)
    assert_readable([(seconds(a), seconds(b), re.sub(r"^<speaker_\d>", "", t.strip())) for _, a, b, t in cues])
    for _, a, b, text in cues:
        tag = re.match(r"<(speaker_\d)>", text)
        assert tag, text
        # every word of the cue was spoken by that speaker
        inside = [w for w in all_words if seconds(a) - 1e-3 <= (w.start + w.end) / 2 <= seconds(b) + 1e-3]
        assert inside, text
        assert {f"speaker_{turn_of(w) % 2}" for w in inside} == {tag.group(1)}, (text, inside)
    vtt = to_vtt(transcript)
    assert vtt.count("<v speaker_0>") + vtt.count("<v speaker_1>") == len(cues)


def test_segments_without_word_timestamps_are_split_too():
    """Engines without word times (or a caller that did not ask): split at spaces, times
    spread by length; CJK between characters, two columns each."""
    english = Segment(0.0, 20.0, "This is the first sentence of a long segment that keeps going on "
                                 "and on. And this is the second sentence, which also goes on for a "
                                 "while, with commas, clauses and more words than fit on two lines.")
    chinese = Segment(21.0, 27.0, "欢迎大家来体验达摩院推出的语音识别模型，正是因为存在绝对正义所以我们接受现实的相对正义。")
    transcript = Transcript("", None, 27.0, [english, chinese])
    cues = cues_of(transcript)
    assert_readable([(c.start, c.end, c.text) for c in cues])
    assert "".join(c.text.replace("\n", "") for c in cues if c.start >= 21.0) == chinese.text
    assert all(width(line) <= MAX_LINE_WIDTH and len(line) <= MAX_LINE_WIDTH // 2
               for c in cues if c.start >= 21.0 for line in c.lines)
    assert " ".join(c.text.replace("\n", " ") for c in cues if c.start < 21.0) == english.text


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_cli_transcribe_subtitles_use_word_timestamps(testdata, tmp_path, fmt, reading):
    audio, _ = concatenate(testdata, READING, 0.4)
    wav = tmp_path / "reading.wav"
    sf.write(wav, audio, SAMPLE_RATE, subtype="FLOAT")  # the same samples as `reading`
    config = tmp_path / "asrhub.toml"
    config.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\n\n[engines.whisper]\nmodel = "tiny.en"\n')
    result = subprocess.run([str(Path(sys.executable).parent / "asrhub"), "transcribe", str(wav),
                             "--format", fmt, "--config", str(config)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    body = result.stdout if fmt == "srt" else result.stdout.split("\n\n", 1)[1]
    pattern = SRT_CUE if fmt == "srt" else re.compile(r"()(\S+) --> (\S+)\n(.+?)(?:\n\n|\n?$)", re.S)
    cues = [(seconds(a), seconds(b), text.strip()) for _, a, b, text in pattern.findall(body)]
    assert len(cues) >= 5, result.stdout
    assert_readable(cues)
    # Cut at Whisper's word times: the document is the one made from the word-timestamped
    # transcript of the same samples.
    assert result.stdout == (to_srt(reading) if fmt == "srt" else to_vtt(reading))


@pytest.mark.slow
def test_chinese_cues_count_two_columns_per_character(testdata, tmp_path_factory):
    """Whisper base on 20 s of Mandarin (two sentences without pauses between clauses): cues
    of at most 21 characters a line, never starting a line with punctuation."""
    hub = make_hub({"server": {"state_dir": str(tmp_path_factory.mktemp("base"))}})
    engine = hub.engine_sync("asr")
    try:
        audio, _ = concatenate(testdata, ["zh/funasr_csharp_example_1.wav", "zh/funasr_csharp_example_2.wav"], 0.4)
        heard = engine.transcribe(audio, language="zh", word_timestamps=True)
    finally:
        hub.unload_engines()
    assert sum(len(seg.text) for seg in heard.segments) > 2 * MAX_LINE_WIDTH // 2  # more than one cue's worth
    cues = cues_of(heard)
    assert_readable([(c.start, c.end, c.text) for c in cues])
    lines = [line for c in cues for line in c.lines]
    assert all(len(line) <= MAX_LINE_WIDTH // 2 for line in lines), lines
    assert not any(line[0] in "，。？！、；：" for line in lines), lines
    spoken = "".join(w.word for seg in heard.segments for w in seg.words)
    assert "".join(lines) == "".join(spoken.split())
