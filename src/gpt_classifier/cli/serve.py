"""`serve.py` / `gpt-classifier serve`: load a model, listen, and run the HTTP server with uvicorn."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from dataclasses import asdict
from pathlib import Path

import uvicorn
from uvicorn.supervisors import Multiprocess

from gpt_classifier.deploy.predictor import load_predictor
from gpt_classifier.deploy.server import Limits, create_app
from gpt_classifier.deploy.workers import WorkerSettings, threads_per_worker
from gpt_classifier.errors import GPTClassifierError


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return number


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Serve a trained classifier: POST /predict (JSON), GET /health, GET /stats, a page at /.",
    )
    add = parser.add_argument
    add("checkpoint", metavar="CKPT", help="a gpt-classifier checkpoint (.ckpt) or an exported model (.onnx)")
    add("--host", default="127.0.0.1", help="address to listen on (default: %(default)s; 0.0.0.0: every one)")
    add("--port", type=int, default=8000, help="port (default: %(default)s; 0: any free port)")
    add("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    default = Limits()
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
    add("--access-log", action=argparse.BooleanOptionalAction, default=True, help="a log line per request")
    args = parser.parse_args(argv)
    if args.max_wait_ms < 0:
        parser.error(f"--max-wait-ms {args.max_wait_ms} is negative: pass 0 or more")
    return args


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    limits = Limits(
        args.max_batch_size,
        args.max_wait_ms,
        args.max_body_bytes,
        args.max_texts,
        max_explain_texts=args.max_explain_texts,
    )
    try:
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
        run_workers(args, limits, sock)
        return 0
    config = uvicorn.Config(create_app(predictor, limits), access_log=args.access_log, log_level="info")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def run_workers(args: argparse.Namespace, limits: Limits, sock: socket.socket) -> None:
    """`--workers N`: uvicorn's supervisor runs N processes that share `sock`; each builds the app with
    `workers.app_from_env` from the settings passed in the environment, with its share of the cores."""
    WorkerSettings(
        str(Path(args.checkpoint).resolve()), args.device, threads_per_worker(args.workers), asdict(limits)
    ).to_environment()
    config = uvicorn.Config(
        "gpt_classifier.deploy.workers:app_from_env",
        factory=True,
        workers=args.workers,
        access_log=args.access_log,
        log_level="info",
    )
    Multiprocess(config, sockets=[sock]).run()
