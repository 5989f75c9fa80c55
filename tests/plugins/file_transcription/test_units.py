"""Pure parts of the pipeline: piece planning, text joining, results and SRT, clustering, the
store's persistence."""

from __future__ import annotations

import re

import numpy as np

from asrhub.diarize import cluster, fill_unlabelled
from asrhub.engine import Segment
from asrhub.segmenter import quietest_point
from asrhub_plugins.file_transcription.pipeline import (
    Piece,
    build_result,
    fixed_pieces,
    plan_pieces,
    render_result,
)
from asrhub_plugins.file_transcription.store import TaskStore, file_digests, write_chunk

S = 16000


def test_pieces_merge_regions_up_to_the_limit_and_skip_silence():
    regions = [(1 * S, 3 * S), (4 * S, 8 * S), (40 * S, 45 * S)]
    pieces = plan_pieces(regions, 60 * S, max_len=30 * S, pad=0)
    assert pieces == [Piece(1 * S, 8 * S), Piece(40 * S, 45 * S)]


def test_a_long_pause_splits_pieces():
    """Whisper stops at a long pause inside one decode and drops what follows it."""
    regions = [(0, 2 * S), (int(2.8 * S), 5 * S), (8 * S, 10 * S)]
    pieces = plan_pieces(regions, 12 * S, max_len=20 * S, pad=0)
    assert pieces == [Piece(0, 5 * S), Piece(8 * S, 10 * S)]
    assert plan_pieces(regions, 12 * S, max_len=20 * S, pad=0, max_pause=None) == [Piece(0, 10 * S)]


def test_long_region_is_cut_and_speaker_change_splits():
    pieces = plan_pieces([(0, 70 * S)], 70 * S, max_len=30 * S, pad=0)
    assert [(p.start // S, p.end // S) for p in pieces] == [(0, 30), (30, 60), (60, 70)]
    regions = [(0, 2 * S), (3 * S, 5 * S), (6 * S, 8 * S)]
    pieces = plan_pieces(regions, 10 * S, max_len=30 * S, speakers=[0, 0, 1], pad=S // 2)
    assert [(p.start, p.end, p.speaker) for p in pieces] == [(0, int(5.5 * S), 0), (int(5.5 * S), int(8.5 * S), 1)]
    assert fixed_pieces(65 * S, 30 * S)[-1] == Piece(60 * S, 65 * S)


def test_long_regions_are_cut_at_their_quietest_point():
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal(40 * S) * 0.1).astype(np.float32)
    audio[int(17.3 * S):int(17.5 * S)] *= 0.01  # a short pause late in the allowed 20 s
    assert abs(quietest_point(audio, 13 * S, 20 * S) - int(17.4 * S)) <= S // 10
    pieces = plan_pieces([(0, 40 * S)], 40 * S, max_len=20 * S, pad=0,
                         split=lambda lo, hi: quietest_point(audio, lo, hi))
    assert abs(pieces[0].end - int(17.4 * S)) <= S // 10 and pieces[1].start == pieces[0].end
    assert pieces[-1].end == 40 * S and all(p.end - p.start <= 20 * S for p in pieces)



def test_result_and_srt_have_the_seed_layout():
    segments = [Segment(0.0, 5.2, " 分段文本内容", speaker="speaker_0"),
                Segment(5.2, 10.5, "另一个说话人的文本", speaker="speaker_1"),
                Segment(11.0, 12.0, "再来", speaker="speaker_0")]
    result = build_result(segments, 120.5, "zh")
    assert result["speakers"] == [{"id": "speaker_0", "name": "说话人1", "segments": [0, 2]},
                                  {"id": "speaker_1", "name": "说话人2", "segments": [1]}]
    assert result["segments"][0] == {"text": "分段文本内容", "start": 0.0, "end": 5.2, "speaker": "speaker_0"}
    assert result["duration"] == 120.5
    assert render_result(result, "json")["format"] == "json"
    srt = render_result(result, "srt")
    assert srt["format"] == "srt" and srt["segments"] == result["segments"]
    assert srt["text"].startswith("1\n00:00:00,000 --> 00:00:05,200\n<speaker_0>分段文本内容\n\n"
                                  "2\n00:00:05,200 --> 00:00:10,500\n<speaker_1>另一个说话人的文本\n")


def test_clustering_estimates_the_number_of_speakers():
    rng = np.random.default_rng(0)
    a, b, c = (v / np.linalg.norm(v) for v in rng.standard_normal((3, 256)))

    def near(v):
        w = v + 0.15 * rng.standard_normal(256) / 16
        return w / np.linalg.norm(w)

    assert cluster(np.stack([near(a), near(b), near(a), near(b)])) == [0, 1, 0, 1]
    assert cluster(np.stack([near(c), near(c), near(c)])) == [0, 0, 0]
    assert cluster(np.stack([near(a), near(b), near(c)]), max_speakers=2) in ([0, 1, 1], [0, 0, 1], [0, 1, 0])
    assert cluster(np.zeros((0, 256))) == []
    assert fill_unlabelled([(0, 1), (1, 1.2), (5, 6)], [0, None, 1]) == [0, 0, 1]
    assert fill_unlabelled([(0, 1)], [None]) == [0]


def test_store_survives_reopening(tmp_path):
    store = TaskStore(tmp_path / "ft")
    task = store.create_task(task_id="t1", file_name="a.mp3", file_size=10, file_hash="h",
                             output_format="json", chunked=True, chunk_size=4, total_chunks=3,
                             scope="s", client="c")
    assert task.state == "uploading" and task.extension == "mp3"
    write_chunk(store.partial_path("t1"), 4, b"5678")
    store.record_chunk("t1", 1, 4, "md5")
    store.finish("t0", "h|k", {"text": "hi"}, 1.5)
    store.set_meta("rtf", "0.2")
    store.close()
    again = TaskStore(tmp_path / "ft")
    assert again.received_chunks("t1") == [1]
    assert again.chunk_md5("t1", 1) == "md5"
    found = again.get_result("h|k")
    assert found is not None and found[0] == "t0" and found[1] == {"text": "hi"}
    assert again.get_meta("rtf") == "0.2"
    assert again.find_unfinished("s", "h", 10).task_id == "t1"  # type: ignore[union-attr]
    assert again.find_unfinished("other scope", "h", 10) is None
    assert again.find_unfinished("s", "h", 1) is None  # the size must match too
    assert again.pending_of("c") == (1, 10)
    assert again.reserved_bytes() == 10 - 4  # declared, less what is written
    assert file_digests(again.partial_path("t1"))[2] == 8
    again.delete_task("t1")
    assert again.get("t1") is None and not again.spool_dir("t1").exists()
    md5, sha, _ = file_digests(tmp_path / "ft" / "tasks.sqlite3")
    assert re.fullmatch(r"[0-9a-f]{32}", md5) and re.fullmatch(r"[0-9a-f]{64}", sha)


def test_state_directories_are_private_and_old_ones_are_tightened(tmp_path):
    """Issue 18 (13): uploads are other people's recordings: 0700, not 0755."""
    import os
    import stat

    old = tmp_path / "old"
    (old / "uploads").mkdir(parents=True, mode=0o755)
    os.chmod(old, 0o755)
    os.chmod(old / "uploads", 0o755)
    for root in (tmp_path / "new" / "ft", old):
        store = TaskStore(root)
        write_chunk(store.partial_path("t9"), 0, b"x")
        for path in (root, store.uploads, store.spool_dir("t9")):
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
        assert stat.S_IMODE(store.partial_path("t9").stat().st_mode) == 0o600
        assert stat.S_IMODE((root / "tasks.sqlite3").stat().st_mode) == 0o600
        store.close()


OLD_TASKS = """CREATE TABLE tasks (task_id TEXT PRIMARY KEY, file_name TEXT NOT NULL,
    file_size INTEGER NOT NULL, file_hash TEXT NOT NULL, cache_key TEXT NOT NULL,
    output_format TEXT NOT NULL, chunked INTEGER NOT NULL, chunk_size INTEGER NOT NULL,
    total_chunks INTEGER NOT NULL, state TEXT NOT NULL, progress REAL NOT NULL DEFAULT 0,
    duration REAL, error TEXT, attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, queued_at REAL, started_at REAL, finished_at REAL)"""


def test_an_older_database_gains_the_new_columns(tmp_path):
    import sqlite3

    (tmp_path / "ft").mkdir()
    db = sqlite3.connect(tmp_path / "ft" / "tasks.sqlite3")
    db.execute(OLD_TASKS)
    db.execute("INSERT INTO tasks (task_id, file_name, file_size, file_hash, cache_key, output_format,"
               " chunked, chunk_size, total_chunks, state, created_at, updated_at) VALUES"
               " ('old', 'a.wav', 3, 'h', 'h|whisper', 'json', 0, 0, 0, 'queued', 1, 1)")
    db.commit()
    db.close()
    store = TaskStore(tmp_path / "ft")
    old = store.get("old")
    assert old is not None and old.sha256 is None and old.scope == "" and not old.force_refresh
    task = store.create_task(task_id="t1", file_name="a.wav", file_size=3, file_hash="h",
                             output_format="json", chunked=False, chunk_size=0, total_chunks=0,
                             scope="x", force_refresh=True)
    assert task.scope == "x" and task.sha256 is None and task.force_refresh


def test_scope_and_quota_key_of_a_connection():
    from asrhub_plugins.file_transcription.handler import identity
    from asrhub_plugins.file_transcription.settings import FileTranscriptionSettings as S

    # auto: shared without a hub token, by token with one
    assert identity(S(), False, "anything", "10.0.0.1") == ("", "10.0.0.1", True)
    scope, client, shortcut = identity(S(), True, "s3cret", "10.0.0.1")
    assert scope.startswith("token:") and "s3cret" not in scope and client.endswith("@10.0.0.1")
    assert identity(S(), True, "other", "10.0.0.1")[0] != scope
    # an unchecked token picks a scope (it only narrows what the client sees), never a quota
    assert identity(S(cache_scope="token"), False, "a", "10.0.0.1")[1] == "10.0.0.1"
    assert identity(S(cache_scope="token"), False, "a", "p")[0] != identity(
        S(cache_scope="token"), False, "b", "p")[0]
    assert identity(S(cache_scope="peer"), False, "", "10.0.0.2")[0] == "peer:10.0.0.2"
    assert identity(S(cache_scope="none"), True, "s3cret", "p")[2] is False


def test_render_result_keeps_the_seed_rows_and_cuts_srt_at_word_times():
    from asrhub_plugins.file_transcription.pipeline import render_result

    words = [{"start": 0.0 + i * 0.5, "end": 0.4 + i * 0.5, "word": f" w{i}"} for i in range(30)]
    result = {"text": " ".join(w["word"].strip() for w in words), "duration": 15.0, "language": "en",
              "segments": [{"text": " ".join(w["word"].strip() for w in words), "start": 0.0,
                            "end": 14.9, "speaker": "speaker_0", "words": words}],
              "speakers": [{"id": "speaker_0", "name": "说话人1", "segments": [0]}]}
    as_json = render_result(result, "json")
    assert set(as_json["segments"][0]) == {"text", "start", "end", "speaker"}
    srt = render_result(result, "srt")["text"]
    blocks = srt.strip().split("\n\n")
    assert len(blocks) >= 3  # one 15 s segment, cues of at most 7 s cut at word times
    first_end = blocks[0].split("\n")[1].split(" --> ")[1]
    assert first_end.endswith(",400") or first_end.endswith(",900")  # a word's end time
