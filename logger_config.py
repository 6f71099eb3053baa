"""Logging: console at the chosen level, a rotating file at DEBUG, UTC times, secrets redacted.

Text by default; with LOG_FORMAT=json, one JSON object per line for log collectors.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

LOG_FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)-7s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
MAX_LOG_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5
REDACTED = "[REDACTED]"

# Broader than RFC 5322 on purpose: over-masking costs little, leaking an address costs a lot.
EMAIL_IN_TEXT = re.compile(r"\w[\w.!#$%&'*+/=?^`{|}~-]*@[\w-]+(?:\.[\w-]+)*")
# Line breaks and other control characters in a message (from data, such as a malformed
# email) would let the data forge log lines or drive a terminal; they are escaped.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def mask_email(email: str | None) -> str:
    """j***@example.com: enough to tell users apart in a log, not enough to contact them.

    Without an @ only the first character is kept; a missing email is `<none>`.
    """
    text = (email or "").strip()
    if not text:
        return "<none>"
    local, at, domain = text.rpartition("@")
    if not at:
        return text[:1] + "***"
    return f"{local[:1]}***@{domain}"


def mask_emails(text: str) -> str:
    """Mask every email-looking part of free text (Iterable's messages quote addresses)."""
    return EMAIL_IN_TEXT.sub(lambda match: mask_email(match.group()), text)


class RedactingFilter(logging.Filter):
    """Replaces known secrets and masks email addresses in every record before it is written."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        cleaned = escape_controls(self.clean(message))
        if record.exc_text:
            record.exc_text = self.clean(record.exc_text)
        record.msg, record.args = cleaned, None
        return True

    def clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return mask_emails(text)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC), level, logger, message, run_id, exception."""

    def __init__(self, run_id: str | None = None) -> None:
        super().__init__()
        self.run_id = run_id

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, object] = {
            "time": f"{created:%Y-%m-%dT%H:%M:%S}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "run_id": self.run_id,
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        summary = getattr(record, "summary", None)
        if summary is not None:  # the run's last record (main.summary_record)
            entry["summary"] = summary
        return json.dumps(entry, ensure_ascii=False, default=str)


def make_formatter(log_format: str, run_id: str | None) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(run_id)
    formatter = logging.Formatter(LOG_FORMAT, DATE_FORMAT)
    formatter.converter = time.gmtime
    return formatter


def setup_logging(
    level: str,
    log_file: Path | None,
    secrets: Iterable[str] = (),
    log_format: str = "text",
    run_id: str | None = None,
) -> None:
    """Configure the root logger once: console (stderr) at level, file at DEBUG.

    Both get the same format; `run_id` goes into every JSON line.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.DEBUG)
    formatter = make_formatter(log_format, run_id)
    redactor = RedactingFilter(secrets)

    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    console.setFormatter(formatter)
    console.addFilter(redactor)
    root.addHandler(console)

    if log_file is not None:
        _create_private(log_file)
        file_handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=MAX_LOG_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
        )
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(formatter)
        file_handler.addFilter(redactor)
        root.addHandler(file_handler)
    # Third-party chatter (connection pool lines) stays in the file, not on the console.
    for chatty in ("urllib3", "mysql.connector"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


def _create_private(path: Path) -> None:
    """Create the file owner-only, and tighten it if an older run left it readable by others."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)
