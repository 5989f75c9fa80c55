"""Streaming STT tests. The suite runs with --import-mode=importlib, which puts no test folder
on sys.path: register this folder's helper module so tests can ``import stt_helpers``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if "stt_helpers" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("stt_helpers", HERE / "stt_helpers.py")
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["stt_helpers"] = _module
    _spec.loader.exec_module(_module)
