"""structlog for everything: JSON when stdout is not a tty, stdlib loggers routed through it."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

# Libraries that log chattily at INFO (FunASR reconfigures root logging on import).
NOISY_LOGGERS = ("funasr", "modelscope", "faster_whisper", "numba", "aiohttp.access", "jieba",
                 "urllib3", "filelock", "matplotlib", "h5py")


def configure_logging(level: str = "info", fmt: str = "auto", stream=None) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (structlog.processors.JSONRenderer() if fmt == "json"
                else structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    numeric = getattr(logging, level.upper(), logging.INFO)
    root.setLevel(numeric)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientErrorFilter) for f in server_log.filters):
        server_log.addFilter(ClientErrorFilter())


class ClientErrorFilter(logging.Filter):
    """aiohttp logs a malformed request (oversized or too many headers, bad request line) at
    error level with a traceback: a client can flood the log with them. Such records become one
    info line without the traceback; server-side failures keep their level."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        code = getattr(exc, "code", None)
        if exc is not None and isinstance(code, int) and 400 <= code < 500 \
                and type(exc).__module__.startswith("aiohttp"):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "bad_http_request: %s (%s)", (type(exc).__name__, code)
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_root_after_import() -> None:
    """FunASR and others call ``logging.basicConfig`` on import; undo their extra handlers."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(getattr(h, "formatter", None),
                                                   structlog.stdlib.ProcessorFormatter)]
    if ours:
        root.handlers[:] = ours
