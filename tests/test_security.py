"""Token auth on every listener, origin allow-list, and TLS (wss/https) with a self-signed cert."""

from __future__ import annotations

import datetime
import ssl

import aiohttp
import pytest
import pytest_asyncio

from asrhub.testing import make_hub, running_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

# The WebSocket path of each built-in protocol, and one HTTP path of extra listeners.
WS_PATHS = {
    "ptt": "/ws/asr",
    "streaming_stt": "/",
    "vad_stream": "/",
    "file_transcription": "/",
    "session_broadcast": "/ws/asr/s1?mode=receiver",
    "openai_api": "/v1/realtime?intent=transcription",
    "funasr_runtime": "/",
}
# Raw TCP listeners: their protocols carry no credentials (Wyoming); they log a warning when a
# token is configured, and bind loopback in this test.
TCP_ONLY = {"wyoming"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def guarded(tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    probe = make_hub({})
    names = [n for n in WS_PATHS if n in probe.protocols]
    hub = make_hub({"server": {"token": "s3cret", "allowed_origins": ["https://ok.example"],
                               "state_dir": str(state)},
                    "engines": {"whisper": {"model": "tiny.en"}}}, only=names)
    async with running_server(hub) as server:
        yield server, names


def probe_protocols() -> list[str]:
    return list(make_hub({}).protocols)


async def test_every_listener_refuses_requests_without_the_token(guarded):
    server, names = guarded
    assert len(names) == len(WS_PATHS), f"built-in protocols missing: {set(WS_PATHS) - set(names)}"
    assert set(probe_protocols()) <= set(WS_PATHS) | TCP_ONLY, "a new protocol needs a row here"
    async with aiohttp.ClientSession() as http:
        for label, port in server.ports.items():
            base = f"http://127.0.0.1:{port}"
            async with http.get(f"{base}/health") as resp:
                assert resp.status == 401, label
            async with http.get(f"{base}/metrics?token=wrong") as resp:
                assert resp.status == 401, label
            async with http.get(f"{base}/health?token=s3cret") as resp:
                assert resp.status == 200, label
        for name in names:
            url = f"http://127.0.0.1:{server.ports[name]}{WS_PATHS[name]}"
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url)
            assert refused.value.status == 401, name
            ws = await http.ws_connect(url, headers={"Authorization": "Bearer s3cret"})
            assert not ws.closed, name
            await ws.close()
    for name in names:
        assert server.hub.counters[name].connections_total == 1, "no audio path was reached"


async def test_origin_allow_list(guarded):
    server, names = guarded
    url = f"http://127.0.0.1:{server.ports[names[0]]}{WS_PATHS[names[0]]}?token=s3cret"
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, origin="https://evil.example")
        assert refused.value.status == 403
        ws = await http.ws_connect(url, origin="https://ok.example")
        await ws.close()


def self_signed(tmp_path):
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
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_tls_wss_and_https(tmp_path):
    cert, key = self_signed(tmp_path)
    hub = make_hub({"server": {"tls_cert": str(cert), "tls_key": str(key),
                               "state_dir": str(tmp_path / "state")},
                    "engines": {"whisper": {"model": "tiny.en"}}}, only=["ptt"])
    client_ctx = ssl.create_default_context(cafile=str(cert))
    client_ctx.check_hostname = True
    async with running_server(hub) as server:
        port = server.ports["ptt"]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://localhost:{port}/health", ssl=client_ctx) as resp:
                assert resp.status == 200
            ws = await http.ws_connect(f"wss://localhost:{port}/ws/asr", ssl=client_ctx)
            hello = await ws.receive_json()
            assert hello["type"] == "status" and hello["code"] == 200
            await ws.close()
            with pytest.raises(aiohttp.ClientError):  # plain http to a TLS port fails
                async with http.get(f"http://localhost:{port}/health") as resp:
                    await resp.read()
