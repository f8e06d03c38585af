"""What every request passes first (pure ASGI, before FastAPI): a request id, the Host check, the API
key, the Content-Type of POSTs, one log line and the request metrics.

Refusals are JSON `{"error": reason}` like every other 4xx of the server. The request id (the
client's `X-Request-ID` when it is sane, else a new one) is on every response and every log line.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from dataclasses import dataclass, field

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpt_classifier.deploy.metrics import Metrics

log = logging.getLogger("gpt_classifier.deploy.server")

ROUTES = {"/", "/predict", "/health", "/stats", "/metrics", "/live", "/ready"}
PUBLIC_ROUTES = {"/", "/live", "/ready"}  # the page (it asks for the key) and the probes
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


@dataclass
class Security:
    """Who may ask: `api_key` (None: anyone) and the Host names served (`"*"`: any)."""

    api_key: str | None = None
    allowed_hosts: list[str] = field(default_factory=lambda: list(LOOPBACK_HOSTS))
    max_header_bytes: int = 16384  # request line + headers; uvicorn's h11 bounds only partial ones


def host_name(host_header: str) -> str:
    """`example.com:8000` -> `example.com`, `[::1]:8000` -> `::1`."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class Guard:
    """ASGI middleware: refuses what the `Security` settings exclude and times what it lets through."""

    def __init__(self, app: ASGIApp, security: Security, metrics: Metrics, *, access_log: bool) -> None:
        self.app = app
        self.security = security
        self.metrics = metrics
        self.access_log = access_log

    def refusal(self, scope: Scope, headers: Headers) -> tuple[int, str, dict[str, str]] | None:
        """(status, reason, extra headers) when the request must not reach the app, else None."""
        target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        head_bytes = target + sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if head_bytes > self.security.max_header_bytes:
            limit = f"the limit of {self.security.max_header_bytes} (--max-header-bytes)"
            return (
                431,
                f"request headers of {head_bytes} bytes are over {limit}: send fewer or shorter ones",
                {},
            )
        hosts = self.security.allowed_hosts
        host = host_name(headers.get("host", ""))
        if "*" not in hosts and host not in hosts:
            return 400, f"Host {host!r} is not served here: use {hosts[0]} or pass --allowed-hosts", {}
        if self.security.api_key and scope["path"] not in PUBLIC_ROUTES:
            scheme, _, key = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not key:
                reason = "missing API key: send the header 'Authorization: Bearer KEY'"
                return 401, reason, {"WWW-Authenticate": "Bearer"}
            if not hmac.compare_digest(key.strip().encode(), self.security.api_key.encode()):
                return 401, "wrong API key", {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        if scope["method"] == "POST":
            media_type, _, params = headers.get("content-type", "").partition(";")
            charset = (
                params.strip().lower().removeprefix("charset=").strip('"') if params.strip() else "utf-8"
            )
            if media_type.strip().lower() != "application/json" or charset not in ("utf-8", "utf8"):
                got = headers.get("content-type") or "none"
                return 415, f"Content-Type {got!r}: send 'Content-Type: application/json' (UTF-8)", {}
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = headers.get("x-request-id", "")
        request_id = given if SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started, status = time.perf_counter(), 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        try:
            if refused := self.refusal(scope, headers):
                code, reason, extra = refused
                log.warning("%s %s -> %d: %s [%s]", scope["method"], scope["path"], code, reason, request_id)
                response = JSONResponse({"error": reason}, status_code=code, headers=extra)
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            self.record(scope, status, time.perf_counter() - started, request_id)

    def record(self, scope: Scope, status: int, seconds: float, request_id: str) -> None:
        route = scope["path"] if scope["path"] in ROUTES else "other"
        self.metrics.requests.labels(route, scope["method"], str(status)).inc()
        self.metrics.latency.labels(route).observe(seconds)
        if self.access_log:
            client = "{}:{}".format(*scope["client"]) if scope.get("client") else "-"
            log.info(
                '%s "%s %s" %d %.1f ms [%s]',
                client,
                scope["method"],
                scope["path"],
                status,
                1e3 * seconds,
                request_id,
            )
