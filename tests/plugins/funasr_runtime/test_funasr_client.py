"""FunASR's own Python client, unchanged, against ``asrhub serve`` (Whisper tiny.en, Silero VAD)
on loopback: offline, online and 2pass, paced in real time and as fast as it can send, two
client processes at once; the text it writes is checked against the human references."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import soxr

from asrhub.testing import free_port, testdata_dir, wer

from .conftest import (
    OTHER,
    READER,
    Serve,
    joined_clips,
    read16k,
    reference,
    run_client,
    scp,
    write_config,
)

pytestmark = pytest.mark.slow
# tiny.en on these clips: 0-12 % WER offline; streaming cuts utterances where the VAD says.
MAX_WER = 0.25
MAX_WER_ONLINE = 0.35


def by_name(names: list[str]) -> dict[str, str]:
    return {name.split("/")[-1].rsplit(".", 1)[0]: name for name in names}


def check_ack(run, wav_names) -> None:
    acks = [e for e in run.events if e["is_final"] and not e["text"] and e["mode"] in
            ("offline", "online", "2pass")]
    assert run.returncode == 0, run.output[-3000:]
    assert "server failed" not in run.output and "did not acknowledge" not in run.output, run.output
    assert {e["wav_name"] for e in acks} >= set(wav_names), run.events


def test_offline_two_clients_fast(whisper_server, tmp_path):
    names = [READER[0], OTHER]
    run = run_client(tmp_path, whisper_server.port, scp(tmp_path, names), "offline",
                     fast=True, threads=2)
    check_ack(run, by_name(names))
    for wav_name, clip in by_name(names).items():
        results = [line for line in run.lines if line[0] == wav_name]
        assert len(results) == 1, run.lines  # one result per file
        _, text, timestamp = results[0]
        assert wer(reference(clip), text) <= MAX_WER, (clip, text)
        stamps = json.loads(timestamp)  # the client writes our timestamp string as it is
        assert stamps and all(0 <= a <= b for a, b in stamps), timestamp
        assert len(stamps) == len(text.split())


def test_online_two_clients_realtime(whisper_server, tmp_path):
    """Two recordings of two sentences each, in real time: online pieces that add up to the
    text, each sentence closed by a piece with is_final true (partial pieces in between
    depend on how fast the machine decodes, so they are not counted)."""
    recordings = {"first": [READER[1], READER[2]], "second": [OTHER, READER[1]]}
    lines = []
    for wav_name, clips in recordings.items():
        path = tmp_path / f"{wav_name}.wav"
        sf.write(path, joined_clips(clips), 16000, subtype="PCM_16")
        lines.append(f"{wav_name} {path}\n")
    (tmp_path / "wav.scp").write_text("".join(lines))
    run = run_client(tmp_path, whisper_server.port, tmp_path / "wav.scp", "online",
                     fast=False, threads=2)
    check_ack(run, recordings)
    for wav_name, clips in recordings.items():
        finals = [e for e in run.events if e["wav_name"] == wav_name and e["mode"] == "online"
                  and e["is_final"]]
        # One per sentence, and the acknowledgement (mode "online", is_final true, no text).
        assert len(finals) >= len(clips) + 1, run.texts("online", wav_name)
        text = run.joined("online", wav_name)
        expected = " ".join(reference(c) for c in clips)
        assert wer(expected, text) <= MAX_WER_ONLINE, (expected, run.texts("online", wav_name))


def test_2pass_two_clients_fast(whisper_server, tmp_path):
    names = [READER[0], OTHER]
    run = run_client(tmp_path, whisper_server.port, scp(tmp_path, names), "2pass",
                     fast=True, threads=2)
    check_ack(run, by_name(names))
    for wav_name, clip in by_name(names).items():
        text = run.joined("2pass-offline", wav_name)
        assert wer(reference(clip), text) <= MAX_WER, (clip, run.texts("2pass-offline", wav_name))


def test_2pass_realtime_sentences(whisper_server, tmp_path):
    """Three sentences with pauses, paced in real time: 2pass-online pieces while each is
    spoken, then a 2pass-offline result per sentence (the VAD's), in order."""
    path = tmp_path / "three.wav"
    sf.write(path, joined_clips(READER), 16000, subtype="PCM_16")
    run = run_client(tmp_path, whisper_server.port, path, "2pass", fast=False)
    check_ack(run, ["demo"])
    modes = [e["mode"] for e in run.events if e["text"]]
    offline = run.texts("2pass-offline", "demo")
    assert len(offline) >= 3, modes
    assert "2pass-online" in modes, modes
    assert modes[-1] == "2pass-offline", modes  # no sentence's pieces left unreplaced
    assert wer(" ".join(reference(n) for n in READER), "".join(offline)) <= MAX_WER, offline


def test_offline_mp3(whisper_server, tmp_path):
    """A container file in offline mode: the client sends its bytes as they are
    (wav_format "others"); the hub's audio edge decodes them."""
    path = tmp_path / "reader.mp3"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mp3", rate=16000)
        stream.layout = "mono"
        audio = read16k(READER[0])
        frame = av.AudioFrame.from_ndarray(audio[None, :], format="flt", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    assert path.read_bytes()[:3] in (b"ID3", b"\xff\xfb", b"\xff\xf3") or path.stat().st_size > 1000
    run = run_client(tmp_path, whisper_server.port, path, "offline", fast=True)
    check_ack(run, ["demo"])
    assert len(run.lines) == 1, run.lines
    assert wer(reference(READER[0]), run.lines[0][1]) <= MAX_WER, run.lines


@pytest.mark.parametrize("mode", ["2pass", "offline"])
def test_8khz_pcm(whisper_server, tmp_path, mode):
    """Raw 8 kHz PCM (--audio_fs 8000): resampled to 16 kHz by the server."""
    audio = soxr.resample(read16k(OTHER), 16000, 8000)
    path = tmp_path / "other8k.pcm"
    path.write_bytes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    run = run_client(tmp_path, whisper_server.port, path, mode, fast=True,
                     extra=["--audio_fs", "8000"])
    check_ack(run, ["demo"])
    text = run.joined("2pass-offline" if mode == "2pass" else "offline", "demo")
    assert wer(reference(OTHER), text) <= MAX_WER, text


def test_bad_mode_is_reported_by_the_client(whisper_server, tmp_path):
    """FunASR's server drops such a connection silently; asrhub says why, and the client
    shows it (the close reason in its error)."""
    run = run_client(tmp_path, whisper_server.port, testdata_dir() / OTHER, "nonsense", fast=True)
    assert "unsupported mode 'nonsense'" in run.output, run.output[-3000:]
    assert not run.lines


def test_server_log_has_one_summary_per_connection(whisper_server):
    summaries = [s for s in whisper_server.summaries() if s.get("protocol") == "funasr_runtime"]
    assert summaries, "no session_closed lines"
    assert all("inputs" in s and "close_reason" in s for s in summaries)


def self_signed(tmp: Path) -> tuple[Path, Path]:
    import datetime

    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_wss_with_the_clients_default_ssl(tmp_path):
    """With TLS configured the listener is wss, and the client's default --ssl 1 works."""
    cert, key = self_signed(tmp_path)
    port = free_port()
    config = write_config(tmp_path, port, listener=[f'tls_cert = "{cert}"', f'tls_key = "{key}"'])
    server = Serve(config, port, tmp_path / "serve.log", tls=True)
    server.start()
    try:
        run = run_client(tmp_path, port, testdata_dir() / OTHER, "offline", fast=True,
                         tls=True)
    finally:
        server.stop()
    check_ack(run, ["demo"])
    assert wer(reference(OTHER), run.lines[0][1]) <= MAX_WER, run.lines
