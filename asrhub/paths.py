"""Where asrhub's bundled files live."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def web_dir() -> Path:
    """The demo page folder (``web/`` in the source tree)."""
    return REPO_ROOT / "web"
