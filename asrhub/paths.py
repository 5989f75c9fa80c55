"""Where asrhub's bundled files live: inside the installed package, found with
``importlib.resources``, so a wheel install and an editable checkout behave the same.

setup.cfg maps the top-level ``web/`` and ``systemd/`` folders of the source tree to the
packages ``asrhub.web`` and ``asrhub.systemd``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _package_dir(package: str) -> Path:
    root = files(package)
    # aiohttp's static route and shutil need real files; a wheel is always unpacked on install,
    # so only an unusual importer (a zip) lands here.
    path = Path(str(root))
    if not path.is_dir():
        raise FileNotFoundError(f"{package} is not an unpacked folder ({root}); reinstall asrhub with pip")
    return path


def web_dir() -> Path:
    """The demo page folder (``web/`` in the source tree, ``asrhub/web`` when installed)."""
    return _package_dir("asrhub.web")


def systemd_dir() -> Path:
    """The unit file and the commented example config (``systemd/`` in the source tree)."""
    return _package_dir("asrhub.systemd")


def unit_file() -> Path:
    return systemd_dir() / "asrhub.service"


def example_config() -> Path:
    return systemd_dir() / "asrhub.toml"
