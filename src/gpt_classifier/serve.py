"""Serve a trained classifier over HTTP: `POST /predict`, `GET /health`, `GET /stats` and a page at `/`.

FastAPI + uvicorn (see README "Serve" for why). Concurrent requests share forward passes through a
`Batcher` (dynamic batching, batching.py). Every bad request gets a 4xx with `{"error": reason}` and
one log line; no endpoint reads files or code named by a client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib.resources import files
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from gpt_classifier.batching import Batcher
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.predict import Prediction, Predictor, load_predictor

log = logging.getLogger(__name__)

USAGE = 'send {"texts": ["...", ...]} or {"text": "..."}'
JSON_TYPES = {dict: "an object", list: "a list", bool: "a boolean", int: "a number", float: "a number"}


@dataclass
class Limits:
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_body_bytes: int = 1_000_000
    max_texts: int = 256


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as its declared or streamed size is over `limit`."""
    too_big = f"request body over the limit of {limit} bytes (--max-body-bytes): send fewer or shorter texts"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, too_big)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, too_big)
    return bytes(body)


def parse_texts(body: bytes, max_texts: int) -> list[str]:
    """The texts of a `/predict` body, or an HTTPException naming what is wrong and how to fix it."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise HTTPException(400, f"body is not valid JSON ({err}): {USAGE}") from None
    if not isinstance(data, dict):
        raise HTTPException(422, f"body is {JSON_TYPES.get(type(data), 'not an object')}: {USAGE}")
    unknown = sorted(set(data) - {"text", "texts"})
    if unknown:
        raise HTTPException(422, f"unknown key {unknown[0]!r}: {USAGE}")
    if len(data) != 1:
        raise HTTPException(422, f"no texts: {USAGE}" if not data else f"both text and texts: {USAGE}")
    if "text" in data:
        texts, names = [data["text"]], ["text"]
    else:
        texts = data["texts"]
        if not isinstance(texts, list):
            raise HTTPException(422, f"texts is {JSON_TYPES.get(type(texts), 'not a list')}: {USAGE}")
        if not texts:
            raise HTTPException(422, f"texts is an empty list: {USAGE}")
        if len(texts) > max_texts:
            limit = f"the limit of {max_texts} per request (--max-texts)"
            raise HTTPException(413, f"{len(texts)} texts is over {limit}: send them in several requests")
        names = [f"texts[{i}]" for i in range(len(texts))]
    for name, text in zip(names, texts, strict=True):
        if not isinstance(text, str):
            kind = "null" if text is None else JSON_TYPES.get(type(text), type(text).__name__)
            raise HTTPException(422, f"{name} is {kind}, not a string")
        if not text.strip():
            raise HTTPException(422, f"{name} is empty: send some text to classify")
    return texts


def create_app(predictor: Predictor, limits: Limits | None = None) -> FastAPI:
    """The ASGI app around a loaded model: it never reads files or code named by a client."""
    limits = limits or Limits()
    batcher: Batcher[str, Prediction] = Batcher(
        lambda texts: predictor.predict(texts, batch_size=limits.max_batch_size),
        limits.max_batch_size,
        limits.max_wait_ms,
    )
    errors = 0
    page = files("gpt_classifier").joinpath("assets/web/index.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()

    app = FastAPI(title="gpt-classifier", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        nonlocal errors
        errors += 1
        log.warning("%s %s -> %d: %s", request.method, request.url.path, err.status_code, err.detail)
        return JSONResponse({"error": err.detail}, status_code=err.status_code)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "classes": predictor.class_names, **asdict(limits)}

    @app.get("/stats")
    async def get_stats() -> dict[str, Any]:
        return {**batcher.stats.as_dict(), "errors": errors}

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        texts = parse_texts(await read_body(request, limits.max_body_bytes), limits.max_texts)
        try:
            predictions = await batcher.submit(texts)
        except Exception as err:
            raise HTTPException(500, f"prediction failed: {type(err).__name__}: {err}") from None
        return {
            "predictions": [
                {"label": p.label, "probability": p.probability, "probabilities": p.probabilities}
                for p in predictions
            ]
        }

    return app


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return number


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="serve.py",
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
    limits = Limits(args.max_batch_size, args.max_wait_ms, args.max_body_bytes, args.max_texts)
    try:
        predictor = load_predictor(args.checkpoint, args.device)  # a .ckpt or an .onnx
        sock = listen(args.host, args.port)
    except GPTClassifierError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
    print(f"Serving {args.checkpoint} ({', '.join(predictor.class_names)}) on {url}", flush=True)
    config = uvicorn.Config(create_app(predictor, limits), access_log=args.access_log, log_level="info")
    uvicorn.Server(config).run(sockets=[sock])
    return 0
