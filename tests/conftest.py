"""Shared fixtures for the core tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from asrhub.testing import testdata_dir


@pytest.fixture(scope="session")
def testdata() -> Path:
    return testdata_dir()
