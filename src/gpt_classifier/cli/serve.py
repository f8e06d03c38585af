"""`serve.py` / `gpt-classifier serve`: load a model, listen, and run the HTTP server with uvicorn.

Every option is described in docs/serving.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import socket
import sys
from dataclasses import asdict
from pathlib import Path

import uvicorn
from uvicorn.supervisors import Multiprocess

from gpt_classifier.deploy.connections import (
    DrainingServer,
    OneLinePerInterval,
    exit_cleanly,
    header_deadline_protocol,
)
from gpt_classifier.deploy.guard import LOOPBACK_HOSTS, Security
from gpt_classifier.deploy.predictor import load_predictor
from gpt_classifier.deploy.server import Limits, create_app
from gpt_classifier.deploy.workers import WorkerSettings, threads_per_worker
from gpt_classifier.errors import GPTClassifierError

API_KEY_VARIABLE = "GPT_CLASSIFIER_API_KEY"
log = logging.getLogger("gpt_classifier.serve")


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return number


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    add, default = parser.add_argument, Limits()
    add(
        "--max-batch-size",
        type=positive_int,
        default=default.max_batch_size,
        help="most texts in one forward pass (default: %(default)s)",
    )
    add(
        "--max-wait-ms",
        type=float,
        default=default.max_wait_ms,
        help="longest wait for more requests to join a batch (default: %(default)s)",
    )
    add(
        "--max-body-bytes",
        type=positive_int,
        default=default.max_body_bytes,
        help="largest request body; larger ones get 413 (default: %(default)s)",
    )
    add(
        "--max-texts",
        type=positive_int,
        default=default.max_texts,
        help="most texts in one request; more get 413 (default: %(default)s)",
    )
    add(
        "--workers",
        metavar="N",
        type=positive_int,
        default=1,
        help="server processes on the one port, each with its own model and cores // N threads "
        "(default: %(default)s)",
    )
    add(
        "--max-explain-texts",
        type=positive_int,
        default=default.max_explain_texts,
        help="most texts in one POST /explain (about one forward pass per token each; default: %(default)s)",
    )


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    add, default = parser.add_argument, Limits()
    add(
        "--body-timeout",
        type=positive_float,
        default=default.body_timeout_s,
        help="seconds for a request's body to arrive; slower ones get 408 (default: %(default)s)",
    )
    add(
        "--header-timeout",
        type=positive_float,
        default=10.0,
        help="seconds for a request's headers to arrive, else the connection closes (default: %(default)s)",
    )
    add(
        "--timeout-keep-alive",
        type=positive_int,
        default=5,
        help="seconds an idle keep-alive connection stays open (default: %(default)s)",
    )
    add(
        "--limit-concurrency",
        type=positive_int,
        default=512,
        help="most open connections or requests at once; over it, 503 (default: %(default)s)",
    )
    add(
        "--max-header-bytes",
        type=positive_int,
        default=16384,
        help="largest request line + headers (default: %(default)s)",
    )
    add(
        "--graceful-timeout",
        type=positive_float,
        default=30.0,
        help="on SIGTERM, seconds to finish the requests in flight (default: %(default)s)",
    )


def add_security_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--api-key-file",
        type=Path,
        metavar="FILE",
        help=f"require 'Authorization: Bearer KEY' with the KEY in FILE (or in ${API_KEY_VARIABLE})",
    )
    add(
        "--allowed-hosts",
        metavar="NAMES",
        help="comma-separated Host names served, or '*' "
        "(default: 127.0.0.1,localhost,::1 when --host is a loopback address, else '*')",
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Serve a trained classifier: POST /predict (JSON), a page at /, "
        "GET /health, /stats, /metrics, /live and /ready (docs/serving.md).",
    )
    add = parser.add_argument
    add("checkpoint", metavar="CKPT", help="a gpt-classifier checkpoint (.ckpt) or an exported model (.onnx)")
    add("--host", default="127.0.0.1", help="address to listen on (default: %(default)s; 0.0.0.0: every one)")
    add("--port", type=int, default=8000, help="port (default: %(default)s; 0: any free port)")
    add("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    add_limit_options(parser)
    add_connection_options(parser)
    add_security_options(parser)
    add("--access-log", action=argparse.BooleanOptionalAction, default=True, help="a log line per request")
    args = parser.parse_args(argv)
    if args.max_wait_ms < 0:
        parser.error(f"--max-wait-ms {args.max_wait_ms} is negative: pass 0 or more")
    return args


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def read_api_key(path: Path | None) -> str | None:
    """The key from `--api-key-file` (its first line), else from $GPT_CLASSIFIER_API_KEY, else None."""
    if path is None:
        return os.environ.get(API_KEY_VARIABLE, "").strip() or None
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise GPTClassifierError(
            f"--api-key-file {path} is unreadable ({err}): pass a text file holding the key"
        ) from None
    if not key or "\n" in key or any(ch.isspace() for ch in key):
        raise GPTClassifierError(f"--api-key-file {path} must hold one key on one line, without spaces")
    return key


def security_of(args: argparse.Namespace) -> Security:
    key = read_api_key(args.api_key_file)
    if args.allowed_hosts:
        hosts = [name.strip().strip("[]") for name in args.allowed_hosts.split(",") if name.strip()]
    else:
        hosts = list(LOOPBACK_HOSTS) if is_loopback(args.host) else ["*"]
    if not is_loopback(args.host) and key is None:
        log.warning(
            "listening on %s without an API key: anyone who can reach it can use it (see --api-key-file)",
            args.host,
        )
    return Security(api_key=key, allowed_hosts=hosts, max_header_bytes=args.max_header_bytes)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, or a clear error when the address is taken or not this machine's."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)  # proto IPPROTO_TCP: asyncio then sets TCP_NODELAY
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as err:
        raise GPTClassifierError(
            f"cannot listen on {host}:{port} ({err.strerror or err}): pass another --port or --host"
        ) from None
    sock.listen(2048)
    return sock


def setup_logging() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    handler.addFilter(OneLinePerInterval())
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    limits = Limits(
        args.max_batch_size,
        args.max_wait_ms,
        args.max_body_bytes,
        args.max_texts,
        args.body_timeout,
        max_explain_texts=args.max_explain_texts,
    )
    try:
        security = security_of(args)
        predictor = load_predictor(args.checkpoint, args.device)  # a .ckpt or an .onnx
        sock = listen(args.host, args.port)
    except GPTClassifierError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
    workers = f" with {args.workers} workers" if args.workers > 1 else ""
    print(f"Serving {args.checkpoint} ({', '.join(predictor.class_names)}){workers} on {url}", flush=True)
    if args.workers > 1:
        del predictor  # it proved the model loads; each worker loads its own
        run_workers(args, limits, security, sock)
        return 0
    app = create_app(
        predictor, limits, security, checkpoint=Path(args.checkpoint).name, access_log=args.access_log
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, exit_cleanly)
    DrainingServer(server_config(app, args)).run(sockets=[sock])
    return 0


def server_config(app: object, args: argparse.Namespace, **workers: object) -> uvicorn.Config:
    """uvicorn's settings: our header deadline and logging, the keep-alive, concurrency, header size
    and graceful-shutdown limits of the command line."""
    return uvicorn.Config(
        app,
        http=header_deadline_protocol(args.header_timeout),
        access_log=False,  # the app logs each request, with its id
        log_config=None,  # our handler: one line per message, never a flood
        timeout_keep_alive=args.timeout_keep_alive,
        limit_concurrency=args.limit_concurrency,
        h11_max_incomplete_event_size=args.max_header_bytes,
        timeout_graceful_shutdown=args.graceful_timeout,  # type: ignore[arg-type]  # a float works
        **workers,
    )


def run_workers(args: argparse.Namespace, limits: Limits, security: Security, sock: socket.socket) -> None:
    """`--workers N`: uvicorn's supervisor runs N processes that share `sock`; each builds the app with
    `workers.app_from_env` from the settings passed in the environment, with its share of the cores."""
    WorkerSettings(
        str(Path(args.checkpoint).resolve()),
        args.device,
        threads_per_worker(args.workers),
        asdict(limits),
        asdict(security),
        args.access_log,
    ).to_environment()
    config = server_config(
        "gpt_classifier.deploy.workers:app_from_env", args, factory=True, workers=args.workers
    )
    Multiprocess(config, sockets=[sock]).run()
