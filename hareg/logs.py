"""JSON log lines on stderr."""

from __future__ import annotations

import json
import logging
import sys
import time

# OpenShift's logLevel vocabulary mapped onto Python levels.
LOG_LEVELS = {
    "Normal": logging.INFO,
    "Debug": logging.DEBUG,
    "Trace": logging.DEBUG,
    "TraceAll": logging.DEBUG,
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str = "Normal") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LOG_LEVELS.get(level, logging.INFO))
    # Third-party chatter stays at WARNING unless asked for everything.
    for name in ("aiohttp.access", "grpc", "asyncio"):
        logging.getLogger(name).setLevel(logging.DEBUG if level == "TraceAll" else logging.WARNING)
