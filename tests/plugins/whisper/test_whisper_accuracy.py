"""Accuracy by default: full-window finals, repeated sentences repaired, batching text-neutral."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from asrhub_plugins.whisper.batching import DecodeRequest
from asrhub_plugins.whisper.engine import FULL_WINDOW, WhisperEngine, token_budget
from asrhub_plugins.whisper.settings import WhisperSettings
from asrhub_plugins.whisper.text import collapse_repeated_sentences, has_repeated_sentence

# A real clip on which the default (10 s) window made Whisper base, told the language is
# English, write the same clause twice ("... the red-faced man in the desert, the red-faced man
# in the desert,"), as "Please call Stella. Please call Stella." came from a 4.6 s clip; the
# full window writes it once.
REPEATING = "zh/funasr_csharp_example_2.wav"
CLIPS = [
    "en/pocketsphinx_librivox_ss01_0870.wav",
    "en/speechbrain_example1.wav",
    "en/pocketsphinx_librivox_ss01_0880.wav",
    "en/speechbrain_spk1_snt1.wav",
    "en/pocketsphinx_librivox_ss01_0890.wav",
    "en/pocketsphinx_cards_005.wav",
]


# ---------------------------------------------------------------------- repeat repair (unit)

@pytest.mark.parametrize(("text", "repaired"), [
    ("Please call Stella. Please call Stella.", "Please call Stella."),
    ("Please call Stella. Please call Stella", "Please call Stella"),
    ("Please call Stella, please call Stella. Ask her to bring these things.",
     "Please call Stella. Ask her to bring these things."),
    ("the red-faced man in the desert, the red-faced man in the desert,",
     "the red-faced man in the desert,"),
    ("One two three. Four five six. One two three. Four five six.", "One two three. Four five six."),
    ("A b c. A b c. A b c.", "A b c."),
    ("开放时间早上九点，开放时间早上九点。", "开放时间早上九点。"),
])
def test_repeated_sentences_are_kept_once(text: str, repaired: str) -> None:
    assert has_repeated_sentence(text)
    assert collapse_repeated_sentences(text) == repaired
    assert not has_repeated_sentence(repaired)


@pytest.mark.parametrize("text", [
    "No, no.",  # short repeats are often really said
    "5 5",
    "He said go go go now.",
    "Hello there. How are you?",
    "Please call Stella. Please call Stella's brother.",
    "我想问一下",
    "",
])
def test_text_without_a_repeated_sentence_is_unchanged(text: str) -> None:
    assert not has_repeated_sentence(text)
    assert collapse_repeated_sentences(text) == text


# ---------------------------------------------------------------------- real model, real clips

@pytest.mark.slow
def test_the_clip_that_came_back_twice_comes_back_once(base: WhisperEngine, base_dir: Path,
                                                       clip) -> None:
    """What ``asrhub transcribe --language en`` runs, on a real clip that repeated a clause."""
    audio = clip(REPEATING)
    text = base.transcribe(audio, language="en").text
    assert text and not has_repeated_sentence(text), text
    assert base.decode(audio, "en").window == base.final_window(len(audio)) == 1500
    # A partial (10 s window) repeated the clause: it is decoded again with the full window.
    partial = base.decode(audio, "en", partial=True)
    assert partial.window == FULL_WINDOW and not has_repeated_sentence(partial.text)
    full = WhisperEngine(WhisperSettings(adaptive_window=False), state_dir=base_dir)
    try:
        assert full.transcribe(audio, language="en").text == partial.text
    finally:
        full.close()


def test_finals_use_the_final_window_and_partials_the_short_one(tiny: WhisperEngine, clip) -> None:
    audio = clip(CLIPS[1])  # 3.3 s
    assert tiny.decode(audio, "en").window == tiny.final_window(len(audio)) == 1500
    assert tiny.transcribe(audio, language="en").segments[0].text == tiny.decode(audio, "en").text
    assert tiny.decode(audio, "en", partial=True).window < FULL_WINDOW


def test_stream_finals_are_final_window_decodes(tiny: WhisperEngine, clip) -> None:
    audio = np.concatenate([np.zeros(8000, np.float32), clip(CLIPS[0]), np.zeros(16000, np.float32)])
    stream = tiny.open_stream()
    finals = []
    for begin in range(0, len(audio), 1024):
        finals += [h for h in stream.accept(audio[begin:begin + 1024]) if h.is_final]
    finals += [h for h in stream.finish() if h.is_final]
    assert len(finals) == 1
    utterance = audio[int(finals[0].start * 16000):int(finals[0].end * 16000)]
    assert finals[0].text == tiny.decode(utterance, "en").text


# ---------------------------------------------------------------------- batching

def decode_at_once(engine: WhisperEngine, audios: list[np.ndarray]) -> list:
    """Every clip decoded as a final from a thread of its own, all released at once (what
    concurrent sessions do): the batcher sees them together."""
    results: list = [None] * len(audios)
    start = threading.Barrier(len(audios))

    def decode(index: int) -> None:
        start.wait()
        results[index] = engine.decode(audios[index], "en")

    threads = [threading.Thread(target=decode, args=(i,)) for i in range(len(audios))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def _request(engine: WhisperEngine, audio: np.ndarray, *, partial: bool = False) -> DecodeRequest:
    window = FULL_WINDOW if not partial else 1000
    return DecodeRequest(features=engine._features(audio, window), window=window,
                         language=None if engine.multilingual else "en", previous=[],
                         budget=token_budget(len(audio) / 16000), final=not partial)


@pytest.mark.slow
def test_a_batched_engine_call_gives_the_text_of_one_by_one_calls(tiny: WhisperEngine, clip) -> None:
    audios = [clip(name) for name in CLIPS]
    alone = []
    for audio in audios:
        request = _request(tiny, audio)
        tiny._run_batch([request])
        alone.append(request.tokens)
    together = [_request(tiny, audio) for audio in audios]
    tiny._run_batch(together)
    assert [r.tokens for r in together] == alone
    assert all(alone)


@pytest.mark.slow
def test_concurrent_decodes_are_batched_and_keep_their_text(tmp_path: Path, clip) -> None:
    # Final windows (15 s) are batched only when allowed (a GPU setting; on CPU they run alone).
    engine = WhisperEngine(WhisperSettings(model="tiny.en", batch_gather_ms=200, max_batch=4,
                                           batch_max_window_s=30),
                           state_dir=tmp_path)
    try:
        audios = [clip(name) for name in CLIPS]
        one_by_one = [engine.decode(audio, "en").text for audio in audios]
        results = decode_at_once(engine, audios)
        assert [r.text for r in results] == one_by_one
        assert max(r.batch_size for r in results) > 1
        assert engine.batcher.stats.largest <= 4
    finally:
        engine.close()


def test_finals_go_before_partials_and_batches_stay_compatible(tiny: WhisperEngine) -> None:
    from asrhub_plugins.whisper.batching import DecodeBatcher

    ran: list[list[DecodeRequest]] = []
    batcher = DecodeBatcher(ran.append, max_batch=2, gather_s=0)
    audio = np.zeros(16000, np.float32)
    partial = _request(tiny, audio, partial=True)
    prompted = _request(tiny, audio)
    prompted.previous = [1, 2, 3]
    finals = [_request(tiny, audio) for _ in range(3)]
    batcher._queue = [partial, prompted, *finals]
    assert batcher._take() == [prompted]  # finals first; the oldest final leads
    assert batcher._take() == finals[:2]  # max_batch
    assert batcher._take() == [finals[2]]
    assert batcher._take() == [partial]


def test_live_finals_lead_and_sessions_take_turns(tiny: WhisperEngine) -> None:
    """A live stream's final goes before a file's; a session that keeps many decodes queued
    gets one per batch while another session waits (fair turns, no text change)."""
    from asrhub_plugins.whisper.batching import DecodeBatcher

    batcher = DecodeBatcher(lambda batch: None, max_batch=2, gather_s=0)
    audio = np.zeros(16000, np.float32)

    def req(flow: str, *, live: bool = True, partial: bool = False) -> DecodeRequest:
        request = _request(tiny, audio, partial=partial)
        request.flow, request.live = flow, live
        return request

    flood = [req("conn_id=flood") for _ in range(4)]
    file_final = req("task_id=file", live=False)
    other = req("conn_id=other")
    partial = req("conn_id=other", partial=True)
    for request in [file_final, *flood, other, partial]:
        batcher._enqueue(request)
    first = batcher._take()
    assert first == [flood[0], other]  # live finals first; one per session before seconds
    second = batcher._take()
    assert second == flood[1:3]  # only the flood's finals remain among the live ones
    assert batcher._take() == [flood[3]]
    assert batcher._take() == [file_final]  # then the file's final, then partials
    assert batcher._take() == [partial]
    # a session that has had more turns waits behind one that has had fewer, though it
    # asked first
    batcher.max_batch = 1
    batcher._enqueue(req("conn_id=flood"))
    batcher._enqueue(req("conn_id=other"))
    assert [r.flow for r in batcher._take()] == ["conn_id=other"]


def test_a_waiting_partial_can_be_withdrawn(tiny: WhisperEngine, clip) -> None:
    """A stream's final is asked for while its partial waits behind another batch: the
    partial is withdrawn (its caller returns at once, nothing decoded); a running one is not."""
    from asrhub_plugins.whisper.batching import DecodeBatcher
    from asrhub_plugins.whisper.engine import PartialTicket

    gate, running = threading.Event(), threading.Event()
    ran: list[int] = []

    def run_batch(batch: list[DecodeRequest]) -> None:
        running.set()
        ran.append(len(batch))
        gate.wait(10)

    batcher = DecodeBatcher(run_batch, gather_s=0)
    audio = np.zeros(16000, np.float32)
    busy, waiting = _request(tiny, audio), _request(tiny, audio, partial=True)
    leader = threading.Thread(target=batcher.submit, args=(busy,))
    leader.start()
    assert running.wait(10)
    follower = threading.Thread(target=batcher.submit, args=(waiting,))
    follower.start()
    while not any(r is waiting for r in batcher._queue):
        threading.Event().wait(0.01)
    assert not batcher.cancel(busy)  # running: it finishes
    assert batcher.cancel(waiting) and waiting.cancelled
    follower.join(10)
    assert not follower.is_alive()  # returned while the other batch still runs
    gate.set()
    leader.join(10)
    assert ran == [1] and not busy.cancelled and not batcher.busy

    # a stream's ticket: once cancelled, its next partial returns at once without decoding
    ticket = PartialTicket()
    assert not ticket.cancel()  # nothing waiting
    decodes = tiny.decodes
    decoded = tiny.decode(clip(CLIPS[0]), "en", partial=True, ticket=ticket)
    assert decoded.cancelled and decoded.text == "" and tiny.decodes == decodes
    ticket.reopen()
    assert tiny.decode(clip(CLIPS[0]), "en", partial=True, ticket=ticket).text


def test_batches_run_side_by_side_up_to_the_lanes(tiny: WhisperEngine) -> None:
    """concurrency = 2 (two CTranslate2 workers): a second batch starts while the first runs,
    a third waits for a lane."""
    from asrhub_plugins.whisper.batching import DecodeBatcher

    gate = threading.Event()
    running: list[int] = []
    lock = threading.Lock()

    def run_batch(batch: list[DecodeRequest]) -> None:
        with lock:
            running.append(len(running))
        gate.wait(10)

    batcher = DecodeBatcher(run_batch, gather_s=0, max_window=1000, concurrency=2)
    audio = np.zeros(16000, np.float32)
    requests = [_request(tiny, audio) for _ in range(3)]  # 30 s windows: one per batch
    threads = [threading.Thread(target=batcher.submit, args=(r,)) for r in requests]
    for thread in threads:
        thread.start()
    for _ in range(500):
        if len(running) == 2:
            break
        threading.Event().wait(0.01)
    threading.Event().wait(0.1)
    assert len(running) == 2  # two lanes busy, the third request waits
    gate.set()
    for thread in threads:
        thread.join(10)
    assert len(running) == 3 and all(r.done for r in requests) and not batcher.busy


def test_long_windows_run_alone_short_ones_together(tiny: WhisperEngine) -> None:
    from asrhub_plugins.whisper.batching import DecodeBatcher

    batcher = DecodeBatcher(lambda batch: None, max_batch=8, gather_s=0, max_window=1000)
    audio = np.zeros(16000, np.float32)
    finals = [_request(tiny, audio) for _ in range(2)]  # 30 s windows
    partials = [_request(tiny, audio, partial=True) for _ in range(3)]  # 10 s windows
    batcher._queue = [*partials, *finals]
    assert batcher._take() == [finals[0]]
    assert batcher._take() == [finals[1]]
    assert batcher._take() == partials


def test_a_failing_batch_fails_each_of_its_callers(tiny: WhisperEngine) -> None:
    from asrhub_plugins.whisper.batching import DecodeBatcher

    def boom(batch: list[DecodeRequest]) -> None:
        raise RuntimeError("model gone")

    batcher = DecodeBatcher(boom)
    with pytest.raises(RuntimeError, match="model gone"):
        batcher.submit(_request(tiny, np.zeros(16000, np.float32)))
    assert not batcher.busy


@pytest.mark.parametrize("name", [CLIPS[0], CLIPS[1], REPEATING])
@pytest.mark.parametrize("window", [1000, 1500, FULL_WINDOW])
def test_features_are_faster_whispers_exactly(tiny: WhisperEngine, clip, name: str,
                                              window: int) -> None:
    audio = clip(name)
    expected = tiny._model.feature_extractor(audio, padding=window * 160)[:, :window]
    assert np.array_equal(tiny._features(audio, window), expected)



@pytest.mark.parametrize(("seconds", "frames"), [(10, 1000), (20, 2000), (30, FULL_WINDOW)])
def test_the_final_window_is_a_setting(tmp_path: Path, clip, seconds: float, frames: int) -> None:
    engine = WhisperEngine(WhisperSettings(model="tiny.en", final_window_s=seconds),
                           state_dir=tmp_path)
    try:
        audio = clip(CLIPS[1])
        assert engine.decode(audio, "en").window == frames
        assert engine.final_window(25 * 16000) == FULL_WINDOW  # audio + 3 s wins
    finally:
        engine.close()


@pytest.mark.parametrize("seconds", [9.0, 31.0])
def test_a_final_window_outside_whispers_is_refused(seconds: float) -> None:
    with pytest.raises(ValueError, match="final_window_s"):
        WhisperSettings(final_window_s=seconds).validate()
