"""FunASR result dicts → text and segments (pure functions, FunASR's documented output shapes)."""

from __future__ import annotations

from asrhub_plugins.funasr.results import clean_text, join_text, language_tag, to_transcript, tokens


def test_sensevoice_tags_are_removed_and_give_the_language() -> None:
    raw = "<|zh|><|NEUTRAL|><|Speech|><|withitn|>开放时间早上9点至下午5点。"
    assert clean_text(raw) == "开放时间早上9点至下午5点。"
    assert language_tag(raw) == "zh"
    assert language_tag("<|nospeech|><|Event_UNK|>") is None
    transcript = to_transcript([{"text": raw}], duration=5.6, language=None, word_timestamps=False)
    assert transcript.language == "zh"
    assert [(s.start, s.end, s.text) for s in transcript.segments] == [(0.0, 5.6, clean_text(raw))]


def test_paraformer_spacing() -> None:
    assert clean_text(" 他 一 定 在 家  because the light is on ") == "他一定在家because the light is on"
    assert join_text("the light", "is on") == "the light is on"
    assert join_text("is on", "他一定") == "is on他一定"
    assert join_text("", "欢迎") == "欢迎"
    assert tokens("欢迎，hello world。 他") == ["欢", "迎", "hello", "world", "他"]


def test_pauses_split_segments_without_sentences() -> None:
    result = [{"text": "欢 迎 hello 大 家",
               "timestamp": [[100, 300], [300, 500], [500, 900], [1600, 1800], [1800, 2000]]}]
    transcript = to_transcript(result, duration=3.0, language="zh", word_timestamps=True)
    assert transcript.text == "欢迎hello大家"
    assert [(s.start, s.end, s.text) for s in transcript.segments] == \
        [(0.1, 0.9, "欢迎hello"), (1.6, 2.0, "大家")]
    assert [w.word for w in transcript.segments[0].words] == ["欢", "迎", "hello"]


def test_sentences_and_speakers() -> None:
    result = [{"text": "欢迎大家。你好？", "timestamp": [[0, 100]] * 6, "sentence_info": [
        {"text": "欢迎大家。", "start": 0, "end": 800, "timestamp": [[0, 200], [200, 400],
                                                                   [400, 600], [600, 800]], "spk": 0},
        {"text": "你好？", "start": 1000, "end": 1400, "timestamp": [[1000, 1200], [1200, 1400]],
         "spk": 1}]}]
    transcript = to_transcript(result, duration=2.0, language=None, word_timestamps=True)
    assert [(s.start, s.end, s.text, s.speaker) for s in transcript.segments] == \
        [(0.0, 0.8, "欢迎大家。", "speaker_0"), (1.0, 1.4, "你好？", "speaker_1")]
    assert [w.word for w in transcript.segments[1].words] == ["你", "好"]


def test_nothing_recognised() -> None:
    for result in ([], [{"text": "", "timestamp": []}]):
        transcript = to_transcript(result, duration=1.0, language=None, word_timestamps=False)
        assert (transcript.text, transcript.segments) == ("", [])
