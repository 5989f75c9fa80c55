"""The ``asrhub`` command."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

import structlog

from asrhub import __version__
from asrhub.config import Config, ConfigError, load_config
from asrhub.logsetup import configure_logging

log = structlog.get_logger("asrhub.cli")


def _build_hub(config: Config):
    from asrhub.hub import Hub
    from asrhub.plugins import make_plugin_manager

    return Hub(config, make_plugin_manager())


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    from asrhub.server import PortInUse, run_forever

    config = _load(args)
    configure_logging(config.server.log_level, config.server.log_format)
    hub = _build_hub(config)
    notify = None
    try:
        import os

        if os.environ.get("NOTIFY_SOCKET"):
            import sdnotify

            notifier = sdnotify.SystemdNotifier()
            notify = notifier.notify
    except ImportError:
        notify = None
    try:
        asyncio.run(run_forever(hub, notify=notify))
    except PortInUse as exc:
        log.error("port_in_use", error=str(exc))
        print(f"asrhub: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    hub = _build_hub(config)
    print(f"{config.source}: OK")
    for lst in hub.listeners:
        state = "enabled" if lst.config.enabled else "disabled"
        print(f"  {lst.label:<24} {lst.config.host}:{lst.config.port}  {state}")
    for kind in ("asr", "vad", "speaker", "denoise", "voiceprints"):
        print(f"  engine {kind:<12} {hub.engine_name(kind)}")  # type: ignore[arg-type]
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from asrhub.plugins import make_plugin_manager, plugin_names

    pm = make_plugin_manager()
    for name, where in plugin_names(pm):
        print(f"{name:<20} {where}")
    hub = _build_hub(load_config(args.config))
    for spec in hub.protocols.values():
        print(f"  protocol {spec.name:<18} port {spec.default_port:<6} {spec.description}")
    for kind, specs in hub.engine_specs.items():
        for spec in specs.values():
            print(f"  {kind:<8} {spec.name:<18} {spec.description}")
    return 0


def cmd_transcribe(args: argparse.Namespace) -> int:
    from asrhub.audio import AudioError, decode_file
    from asrhub.formats import render

    config = _load(args)
    configure_logging("warning" if not args.verbose else "info", "console" if sys.stderr.isatty() else "json")
    hub = _build_hub(config)
    try:
        audio = decode_file(args.file)
    except AudioError as exc:
        print(f"asrhub: {args.file}: {exc}", file=sys.stderr)
        return 2
    engine = hub.engine_sync("asr", args.engine)
    seconds = len(audio) / 16000
    bar = None
    if seconds > 30 and sys.stderr.isatty() or args.progress:
        from tqdm import tqdm

        bar = tqdm(total=100, unit="%", file=sys.stderr, desc=Path(args.file).name, leave=False)

    def progress(fraction: float) -> None:
        if bar is not None:
            bar.n = round(min(1.0, fraction) * 100)
            bar.refresh()

    started = time.perf_counter()
    with structlog.contextvars.bound_contextvars(task_id=uuid.uuid4().hex[:8], file=str(args.file)):
        transcript = engine.transcribe(audio, language=args.language, progress=progress,
                                       word_timestamps=False)
        elapsed = time.perf_counter() - started
        if bar is not None:
            bar.close()
        structlog.get_logger("asrhub.transcribe").info(
            "transcribed", audio_s=round(seconds, 2), processing_s=round(elapsed, 3),
            rtf=round(elapsed / seconds, 4) if seconds else None, engine=engine.name)
    sys.stdout.write(render(transcript, args.format))
    hub.unload_engines()
    return 0


def cmd_speakers(args: argparse.Namespace) -> int:
    import time as _time

    from asrhub.audio import decode_file
    from asrhub.engine import Voiceprint

    hub = _build_hub(_load(args))
    store = hub.engine_sync("voiceprints")
    if args.action == "list":
        for vp in store.list():
            print(f"{vp.speaker_id}\t{vp.name}\t{vp.audio_seconds:.1f}s\t{vp.engine}")
        return 0
    if args.action == "delete":
        if not store.delete(args.speaker_id):
            print(f"asrhub: no speaker {args.speaker_id!r}", file=sys.stderr)
            return 1
        print(f"deleted {args.speaker_id}")
        return 0
    audio = decode_file(args.file)
    speaker = hub.engine_sync("speaker")
    embedding = speaker.embed(audio)
    store.put(Voiceprint(speaker_id=args.speaker_id, name=args.name or args.speaker_id,
                         embedding=embedding, created_at=_time.time(),
                         audio_seconds=len(audio) / 16000, engine=speaker.name))
    print(f"enrolled {args.speaker_id} ({len(audio) / 16000:.1f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asrhub", description="Self-hosted speech-recognition hub")
    parser.add_argument("--version", action="version", version=f"asrhub {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", "-c", help="TOML config file (default: search path, else built-in defaults)")
        return p

    with_config(sub.add_parser("serve", help="serve every enabled protocol")).set_defaults(func=cmd_serve)
    with_config(sub.add_parser("check-config", help="validate the config and exit")).set_defaults(
        func=cmd_check_config)
    with_config(sub.add_parser("plugins", help="list installed plugins, protocols and engines")).set_defaults(
        func=cmd_plugins)
    tr = with_config(sub.add_parser("transcribe", help="transcribe an audio or video file"))
    tr.add_argument("file")
    tr.add_argument("--format", "-f", choices=["text", "json", "srt", "vtt"], default="text")
    tr.add_argument("--engine", "-e", help="ASR engine (default: [engines] asr)")
    tr.add_argument("--language", "-l", help="language code (default: the engine's setting)")
    tr.add_argument("--progress", action="store_true", help="always show a progress bar on stderr")
    tr.add_argument("--verbose", "-v", action="store_true", help="log a summary line to stderr")
    tr.set_defaults(func=cmd_transcribe)
    sp = with_config(sub.add_parser("speakers", help="manage enrolled voiceprints"))
    spsub = sp.add_subparsers(dest="action", required=True)
    spsub.add_parser("list")
    dl = spsub.add_parser("delete")
    dl.add_argument("speaker_id")
    en = spsub.add_parser("enroll")
    en.add_argument("speaker_id")
    en.add_argument("file")
    en.add_argument("--name")
    sp.set_defaults(func=cmd_speakers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"asrhub: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line for the user, details at debug
        from asrhub.engine import EngineError

        if isinstance(exc, EngineError):
            print(f"asrhub: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
