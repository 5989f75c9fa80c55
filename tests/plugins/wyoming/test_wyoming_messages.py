"""The wire format: the bounded reader against bytes framed by the ``wyoming`` package itself,
and every way a stream can be malformed or too large."""

from __future__ import annotations

import asyncio
import json

import pytest
from wyoming.asr import Transcribe, Transcript, TranscriptChunk
from wyoming.audio import AudioChunk, AudioStart
from wyoming.error import Error
from wyoming.event import Event, async_read_event
from wyoming.info import Describe

from asrhub.protocol import ProtocolError
from asrhub_plugins.wyoming import messages as m


def reader_of(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=64 * 1024)
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


async def read(data: bytes, payload: int = 4096, header: int = 2048) -> Event | None:
    return await m.read_event(reader_of(data), payload, header)


async def test_reads_what_the_package_frames():
    chunk = AudioChunk(rate=22050, width=2, channels=2, audio=b"\x01\x02" * 100).event()
    data = b"".join(m.frame(e) for e in (Describe().event(), chunk,
                                         Transcribe(name="tiny.en", language="en").event()))
    reader = reader_of(data)
    first = await m.read_event(reader, 4096, 2048)
    second = await m.read_event(reader, 4096, 2048)
    third = await m.read_event(reader, 4096, 2048)
    assert await m.read_event(reader, 4096, 2048) is None  # clean end of stream
    assert first is not None and first.type == "describe"
    assert second is not None and second.payload == b"\x01\x02" * 100
    assert m.parse_audio_chunk(second) == AudioChunk(rate=22050, width=2, channels=2,
                                                     audio=b"\x01\x02" * 100, timestamp=None)
    assert third is not None
    assert m.parse_transcribe(third) == Transcribe(name="tiny.en", language="en")


async def test_frame_is_the_package_framing():
    event = Transcript(text="héllo", language="en", context={"speaker": None}).event()
    framed = m.frame(event)
    header = json.loads(framed.split(b"\n", 1)[0])
    assert header["type"] == "transcript" and "version" in header and header["data_length"] > 0
    back = await async_read_event(reader_of(framed))
    assert back is not None and Transcript.from_event(back) == Transcript(
        text="héllo", language="en", context={"speaker": None})
    error = await async_read_event(reader_of(m.error_event("too_big", "nope")))
    assert error is not None and Error.from_event(error) == Error(text="nope", code="too_big")


async def test_data_in_the_header_and_after_it_are_merged():
    extra = json.dumps({"language": "en"}).encode()
    header = json.dumps({"type": "transcribe", "data": {"name": "x", "language": "de"},
                         "data_length": len(extra)}).encode()
    event = await read(header + b"\n" + extra)
    assert event is not None and event.data == {"name": "x", "language": "en"}


@pytest.mark.parametrize("data, code", [
    (b"not json\n", m.BAD_EVENT),
    (b"[1, 2]\n", m.BAD_EVENT),
    (b"{\"data\": {}}\n", m.BAD_EVENT),  # no type
    (b"{\"type\": 5}\n", m.BAD_EVENT),
    (b"{\"type\": \"" + b"x" * 100 + b"\"}\n", m.BAD_EVENT),
    (b"{\"type\": \"describe\", \"data\": [1]}\n", m.BAD_EVENT),
    (b"{\"type\": \"describe\", \"data_length\": -1}\n", m.BAD_EVENT),
    (b"{\"type\": \"describe\", \"payload_length\": \"10\"}\n", m.BAD_EVENT),
    (b"{\"type\": \"describe\", \"payload_length\": true}\n", m.BAD_EVENT),
    (b"{\"type\": \"describe\", \"data_length\": 4}\n[1] ", m.BAD_EVENT),  # data not an object
    (b"{\"type\": \"describe\", \"data_length\": 3}\nnop", m.BAD_EVENT),
    (b"{\"type\": \"x\", \"n\": NaN}\n", m.BAD_EVENT),
    (b"{\"type\": \"x\", \"n\": " + b"[" * 40 + b"]" * 40 + b"}\n", m.BAD_EVENT),
    (b"\xff\xfe\n", m.BAD_EVENT),
    (b"{\"type\": \"audio-chunk\", \"payload_length\": 4097}\n", m.TOO_BIG),
    (b"{\"type\": \"audio-chunk\", \"payload_length\": 10000000000000}\n", m.TOO_BIG),
    (b"{\"type\": \"describe\", \"data_length\": 2048}\n", m.TOO_BIG),
    (b"{\"type\": \"describe\", \"pad\": \"" + b"x" * 3000 + b"\"}\n", m.TOO_BIG),
])
async def test_malformed_or_oversized_events_are_protocol_errors(data, code):
    with pytest.raises(ProtocolError) as caught:
        await read(data)
    assert caught.value.code == code


async def test_a_header_without_newline_past_the_stream_limit_is_too_big():
    reader = asyncio.StreamReader(limit=1024)
    reader.feed_data(b"{" + b" " * 5000)
    with pytest.raises(ProtocolError) as caught:
        await m.read_event(reader, 4096, 1024)
    assert caught.value.code == m.TOO_BIG


async def test_end_of_stream_inside_an_event_is_the_client_leaving():
    for data in (b"{\"type\": \"describe\"", b"{\"type\": \"audio-chunk\", \"payload_length\": 10}\n12"):
        with pytest.raises(asyncio.IncompleteReadError):
            await read(data)
    assert await read(b"") is None


def test_audio_and_request_fields_are_checked():
    with pytest.raises(ProtocolError) as caught:
        m.parse_audio_start(Event("audio-start", {"rate": 16000, "width": 2}))
    assert caught.value.code == m.BAD_EVENT and caught.value.fatal
    with pytest.raises(ProtocolError):
        m.parse_audio_chunk(Event("audio-chunk", {"rate": "16000", "width": 2, "channels": 1}))
    with pytest.raises(ProtocolError):
        m.parse_audio_start(Event("audio-start", {"rate": True, "width": 2, "channels": 1}))
    assert m.parse_audio_start(AudioStart(rate=8000, width=2, channels=1).event()) == \
        AudioStart(rate=8000, width=2, channels=1)
    for data in ({"language": 5}, {"name": ["x"]}, {"language": "english please"},
                 {"context": "x"}):
        with pytest.raises(ProtocolError):
            m.parse_transcribe(Event("transcribe", data))
    assert m.parse_transcribe(Event("transcribe", {"language": "en-US"})).language == "en-US"
    with pytest.raises(ProtocolError):
        m.parse_select_program(Event("select-program", {}))


def test_transcript_streaming_is_the_clients_choice():
    assert m.wants_streaming(None, True) and not m.wants_streaming(None, False)
    on = Transcribe(context={"transcript_streaming": True})
    off = Transcribe(context={"transcript_streaming": False})
    assert m.wants_streaming(on, False) and not m.wants_streaming(off, True)
    assert m.wants_streaming(Transcribe(context={"transcript_streaming": "yes"}), True)
    assert TranscriptChunk(text="a").event().type == "transcript-chunk"
