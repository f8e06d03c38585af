"""Connection hygiene under uvicorn: a deadline for a request's headers, and a log that cannot flood.

uvicorn's `timeout_keep_alive` closes connections idle *between* requests; a client that connects and
sends nothing, or trickles its headers a byte at a time, is not covered. `header_deadline_protocol`
closes a connection whose next request's headers are not complete within the deadline (the body has
its own deadline, `Limits.body_timeout_s`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections that do not complete a request's headers within
    `header_timeout_s` (a module-level class: `--workers` pickles it into each worker process)."""

    def __init__(self, *args: Any, header_timeout_s: float = 10.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.arm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.arm_header_deadline()

    def arm_header_deadline(self) -> None:
        self.loop.call_later(self.header_timeout_s, self.close_if_no_new_request, self.cycle)

    def close_if_no_new_request(self, cycle_when_armed: object) -> None:
        """No request's headers arrived since the deadline was set (h11 makes a cycle per request)."""
        if self.cycle is cycle_when_armed and not self.transport.is_closing():
            self.transport.close()


def header_deadline_protocol(header_timeout_s: float) -> Callable[..., HeaderDeadlineProtocol]:
    """The protocol factory uvicorn's `http` setting takes, with the deadline bound (picklable)."""
    return partial(HeaderDeadlineProtocol, header_timeout_s=header_timeout_s)


class OneLinePerInterval(logging.Filter):
    """Each distinct message at most once per `interval_s` (then "N more like this"), tracebacks cut
    to their last line: 1,100 refused sockets give a few lines, not 60 MB of `Too many open files`."""

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.last_shown: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            err = record.exc_info[1]
            record.msg, record.args = f"{record.getMessage()}: {type(err).__name__}: {err}", None
            record.exc_info = record.exc_text = None
        if record.levelno < logging.WARNING:
            return True
        key, now = (record.name, record.getMessage()), time.monotonic()
        shown_at, hidden = self.last_shown.get(key, (-self.interval_s, 0))
        if now - shown_at < self.interval_s:
            self.last_shown[key] = (shown_at, hidden + 1)
            return False
        if hidden:
            record.msg, record.args = f"{record.getMessage()} ({hidden} more like this)", None
        self.last_shown[key] = (now, 0)
        return True


log = logging.getLogger("gpt_classifier.serve")


class DrainingServer(uvicorn.Server):
    """uvicorn's server; on SIGTERM or SIGINT /ready says "draining" at once, then uvicorn stops
    accepting and finishes the requests in flight (bounded by --graceful-timeout)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.config.app.state.readiness.draining = True
        log.info("signal %d: draining (no new connections; finishing the requests in flight)", sig)
        super().handle_exit(sig, frame)


def exit_cleanly(sig: int, frame: FrameType | None) -> None:
    """uvicorn raises the stopping signal again once it has drained: that is a clean stop, exit 0."""
    raise SystemExit(0)
