"""Serve a trained classifier over HTTP: `POST /predict`, `POST /explain`, a page at `/`, `GET /health`,
`/stats`, `/metrics` (Prometheus), `/live` and `/ready` (probes).

FastAPI + uvicorn. Concurrent requests share forward passes through a `Batcher` (dynamic batching,
batching.py). Every request first passes the `Guard` (guard.py: request id, Host, API key,
Content-Type, metrics). Every bad request gets a 4xx with `{"error": reason}` and one log line; no
endpoint reads files or code named by a client. See docs/serving.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict, dataclass
from importlib.resources import files
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from gpt_classifier.deploy.batching import Batcher, BatchFailed
from gpt_classifier.deploy.guard import Guard, Security
from gpt_classifier.deploy.metrics import Metrics
from gpt_classifier.deploy.predictor import Prediction, Predictor
from gpt_classifier.deploy.request_body import ClientGone, parse_texts, read_body

log = logging.getLogger(__name__)
SMALL_BODY_BYTES = 65_536  # bodies over this (or of unknown size) queue for one slot, not for the loop
Answer = TypeVar("Answer")


@dataclass
class Limits:
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_body_bytes: int = 1_000_000
    max_texts: int = 256
    body_timeout_s: float = 30.0
    max_explain_texts: int = 8  # each costs about one forward pass per token (deploy/explain.py)


class Readiness:
    """Ready once the model has answered a warm-up batch, until draining starts or the batcher stops."""

    def __init__(self) -> None:
        self.warmed = False
        self.draining = False
        self.batcher_task: asyncio.Task | None = None

    def reason_not_ready(self) -> str | None:
        if self.draining:
            return "draining: the server is shutting down"
        if self.batcher_task is None or not self.warmed:
            return "warming up: the model has not answered yet"
        if self.batcher_task.done():
            return "the batcher has stopped: restart the server"
        return None


def answer(p: Prediction) -> dict[str, Any]:
    """One text's answer; `windows` (how many were read) only for a model that reads windows."""

    if p.labels is not None:  # several labels per text: those chosen, and every label's probability
        fields: dict[str, Any] = {"labels": p.labels, "probabilities": p.probabilities}
    else:
        fields = {"label": p.label, "probability": p.probability, "probabilities": p.probabilities}
    return fields if p.windows is None else {**fields, "windows": p.windows}


def make_batcher(predictor: Predictor, limits: Limits, metrics: Metrics) -> Batcher[str, Prediction]:
    def run_batch(texts: list[str]) -> list[Prediction]:
        metrics.batch_size.observe(len(texts))
        predictions = predictor.predict(texts, batch_size=limits.max_batch_size)
        metrics.texts.inc(len(texts))
        return predictions

    return Batcher(run_batch, limits.max_batch_size, limits.max_wait_ms)


def lifespan_of(
    predictor: Predictor, batcher: Batcher, readiness: Readiness
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start the batcher, warm the model up (then /ready says ready), stop the batcher at the end."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        readiness.batcher_task = asyncio.create_task(batcher.run())
        await asyncio.to_thread(predictor.predict, ["warm-up"])
        readiness.warmed = True
        yield
        readiness.batcher_task.cancel()

    return lifespan


async def until_disconnected(request: Request) -> None:
    """Returns when the client has gone (its body is read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_gone(request: Request, work: Awaitable[Answer]) -> Answer:
    """`await work`, cancelled (and its texts dropped before their batch) when the client goes."""
    task, watcher = asyncio.ensure_future(work), asyncio.ensure_future(until_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this handler is cancelled (the end of a graceful shutdown)
        for pending in (task, watcher):
            pending.cancel()  # no-op for one that is done
    if task not in done:
        raise ClientGone("while waiting for its answer")
    return task.result()


def add_error_handler(app: FastAPI, metrics: Metrics) -> dict[str, int]:
    """Every HTTPException: one log line with the request id, a JSON answer; counted in `errors`."""
    counts = {"errors": 0}

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        counts["errors"] += 1
        if isinstance(err, ClientGone):
            metrics.disconnects.inc()
        request_id = getattr(request.state, "request_id", "-")
        log.warning(
            "%s %s -> %d: %s [%s]", request.method, request.url.path, err.status_code, err.detail, request_id
        )
        return JSONResponse({"error": err.detail}, status_code=err.status_code)

    return counts


def add_probe_routes(app: FastAPI, readiness: Readiness, metrics: Metrics) -> None:
    @app.get("/live")
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if reason := readiness.reason_not_ready():
            return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    async def get_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def add_model_routes(
    app: FastAPI, predictor: Predictor, limits: Limits, batcher: Batcher, counts: dict[str, int]
) -> None:
    page = files("gpt_classifier").joinpath("assets/web/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "classes": predictor.class_names, "pid": os.getpid(), **asdict(limits)}

    @app.get("/stats")
    async def get_stats() -> dict[str, Any]:
        return {**batcher.stats.as_dict(), "errors": counts["errors"]}

    big_bodies = asyncio.Semaphore(1)  # one big body read and parsed at a time: small ones never wait

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length", "")
        is_big = not declared.isdigit() or int(declared) > SMALL_BODY_BYTES
        async with big_bodies if is_big else contextlib.nullcontext():
            body = await read_body(request, limits.max_body_bytes, limits.body_timeout_s)
            texts = await asyncio.to_thread(parse_texts, body, limits.max_texts)  # 1 MB of JSON: off the loop
        try:
            predictions = await unless_gone(request, batcher.submit(texts))
        except BatchFailed as err:
            raise HTTPException(500, f"prediction failed: {err}") from None
        return {"predictions": [answer(p) for p in predictions]}

    @app.post("/explain")
    async def explain(request: Request) -> dict[str, Any]:
        body = await read_body(request, limits.max_body_bytes, limits.body_timeout_s)
        texts = parse_texts(body, limits.max_explain_texts, "--max-explain-texts")
        return {"explanations": await explanations(predictor, texts)}


def create_app(
    predictor: Predictor,
    limits: Limits | None = None,
    security: Security | None = None,
    *,
    checkpoint: str = "",
    access_log: bool = False,
) -> FastAPI:
    """The ASGI app around a loaded model; `app.state.readiness.draining = True` makes /ready say no."""
    limits, readiness = limits or Limits(), Readiness()
    metrics = Metrics(
        queue_depth=lambda: batcher.waiting_items, ready=lambda: readiness.reason_not_ready() is None
    )
    backend = "onnxruntime" if "onnx" in type(predictor.classifier).__module__ else "torch"
    metrics.model.info(
        {"classes": ",".join(predictor.class_names), "checkpoint": checkpoint, "backend": backend}
    )
    batcher = make_batcher(predictor, limits, metrics)
    app = FastAPI(
        title="gpt-classifier",
        lifespan=lifespan_of(predictor, batcher, readiness),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.readiness = readiness
    counts = add_error_handler(app, metrics)
    add_probe_routes(app, readiness, metrics)
    add_model_routes(app, predictor, limits, batcher, counts)
    app.add_middleware(Guard, security=security or Security(), metrics=metrics, access_log=access_log)
    return app


async def explanations(predictor: Predictor, texts: list[str]) -> list[dict[str, Any]]:
    """Each text's prediction and `[{"token", "start", "end", "score"}]`, computed off the event loop."""
    try:
        from gpt_classifier.deploy.explain import explain_texts
    except ImportError as err:
        raise HTTPException(501, f"explanations need {err.name}: pip install -e '.[explain]'") from None
    try:
        explained = await asyncio.to_thread(explain_texts, texts, predictor.classifier)
    except Exception as err:
        raise HTTPException(500, f"explanation failed: {type(err).__name__}: {err}") from None
    return [
        {
            "label": e.prediction.label,
            "probability": e.prediction.probability,
            "probabilities": e.prediction.probabilities,
            "tokens": [asdict(token) for token in e.tokens],
        }
        for e in explained
    ]
