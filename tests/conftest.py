"""Shared fixtures for the core tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from asrhub.testing import testdata_dir


@pytest.fixture(scope="session")
def testdata() -> Path:
    return testdata_dir()


@pytest.fixture(scope="session")
def cluster_harness() -> ModuleType:
    """tests/cluster_harness.py (the real redis-server, haproxy and asrhub instances of the
    cluster tests), loaded by path: tests/ is not a package."""
    path = Path(__file__).resolve().parent / "cluster_harness.py"
    spec = importlib.util.spec_from_file_location("cluster_harness", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Test modules whose tests load real models (Whisper, Silero, resemblyzer, FunASR, denoisers)
# for most of their cases: marked ``models`` here so that `make test-fast` can leave them out.
# Protocol tests on the shared fake engines (asrhub.testing) stay in the fast set.
MODEL_MODULES = (
    "tests/plugins/whisper/", "tests/plugins/denoise/", "tests/plugins/speakers/",
    "tests/plugins/funasr/", "tests/plugins/vad/", "tests/test_cli_transcribe.py",
    "tests/test_formats.py", "tests/test_loop_responsive.py", "tests/test_systemd.py",
    "tests/test_reload.py", "tests/plugins/openai_api/", "tests/plugins/funasr_runtime/test_funasr",
    "tests/plugins/wyoming/test_wyoming_serve.py", "tests/plugins/file_transcription/test_protocol.py",
    "tests/plugins/vad_stream/test_server.py", "tests/plugins/session_broadcast/test_protocol.py",
    "tests/plugins/streaming_stt/test_stt_e2e.py", "tests/plugins/streaming_stt/test_stt_seed_clients.py",
    "tests/plugins/ptt/test_ptt_server.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(config.rootpath)
    for item in items:
        relative = Path(item.path).resolve().relative_to(root).as_posix()
        if relative.startswith(MODEL_MODULES):
            item.add_marker(pytest.mark.models)
