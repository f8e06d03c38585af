"""Serve a trained classifier over HTTP: `POST /predict`, `POST /explain`, `GET /health`, `GET /stats`
and a page at `/`.

FastAPI + uvicorn (see README "Serve" for why). Concurrent requests share forward passes through a
`Batcher` (dynamic batching, batching.py). Every bad request gets a 4xx with `{"error": reason}` and
one log line; no endpoint reads files or code named by a client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from gpt_classifier.deploy.batching import Batcher
from gpt_classifier.deploy.predictor import Prediction, Predictor

log = logging.getLogger(__name__)

USAGE = 'send {"texts": ["...", ...]} or {"text": "..."}'
JSON_TYPES = {dict: "an object", list: "a list", bool: "a boolean", int: "a number", float: "a number"}


@dataclass
class Limits:
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_body_bytes: int = 1_000_000
    max_texts: int = 256
    max_explain_texts: int = 8  # each costs about one forward pass per token (deploy/explain.py)


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


def parse_texts(body: bytes, max_texts: int, option: str = "--max-texts") -> list[str]:
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
            limit = f"the limit of {max_texts} per request ({option})"
            raise HTTPException(413, f"{len(texts)} texts is over {limit}: send them in several requests")
        names = [f"texts[{i}]" for i in range(len(texts))]
    for name, text in zip(names, texts, strict=True):
        if not isinstance(text, str):
            kind = "null" if text is None else JSON_TYPES.get(type(text), type(text).__name__)
            raise HTTPException(422, f"{name} is {kind}, not a string")
        if not text.strip():
            raise HTTPException(422, f"{name} is empty: send some text to classify")
    return texts


def answer(p: Prediction) -> dict[str, Any]:
    """One text's answer; `windows` (how many were read) only for a model that reads windows."""

    if p.labels is not None:  # several labels per text: those chosen, and every label's probability
        fields: dict[str, Any] = {"labels": p.labels, "probabilities": p.probabilities}
    else:
        fields = {"label": p.label, "probability": p.probability, "probabilities": p.probabilities}
    return fields if p.windows is None else {**fields, "windows": p.windows}


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
        return {"status": "ok", "classes": predictor.class_names, "pid": os.getpid(), **asdict(limits)}

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
        return {"predictions": [answer(p) for p in predictions]}

    @app.post("/explain")
    async def explain(request: Request) -> dict[str, Any]:
        body = await read_body(request, limits.max_body_bytes)
        texts = parse_texts(body, limits.max_explain_texts, "--max-explain-texts")
        return {"explanations": await explanations(predictor, texts)}

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
