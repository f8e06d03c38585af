"""Read and check a `/predict` body: every problem is an HTTPException naming it and the fix."""

from __future__ import annotations

import asyncio
import json

from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

USAGE = 'send {"texts": ["...", ...]} or {"text": "..."}'
JSON_TYPES = {dict: "an object", list: "a list", bool: "a boolean", int: "a number", float: "a number"}
# What a reader cannot see: whitespace, control characters, zero-width and direction marks.
INVISIBLE = "".join(
    map(
        chr,
        [
            *range(0x00, 0x21),
            *range(0x7F, 0xA1),
            0xAD,
            0x1680,
            0x180E,
            *range(0x2000, 0x2010),
            *range(0x2028, 0x2030),
            *range(0x205F, 0x2065),
            0x3000,
            0xFEFF,
        ],
    )
)


class ClientGone(HTTPException):
    """The client closed its connection before its request was answered (logged, counted, no traceback)."""

    def __init__(self, when: str) -> None:
        super().__init__(499, f"client disconnected {when}")


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, refused (413) as soon as its declared or streamed size is over `limit`, and
    (408) when it takes longer than `timeout_s` to arrive."""
    too_big = f"request body over the limit of {limit} bytes (--max-body-bytes): send fewer or shorter texts"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, too_big)

    async def receive_all() -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise HTTPException(413, too_big)
        return bytes(body)

    try:
        return await asyncio.wait_for(receive_all(), timeout_s)
    except ClientDisconnect:
        raise ClientGone("while sending its body") from None
    except asyncio.TimeoutError:
        raise HTTPException(408, f"body not received within {timeout_s:g} s (--body-timeout)") from None


def parse_texts(body: bytes, max_texts: int, option: str = "--max-texts") -> list[str]:
    """The texts of a `/predict` (or `/explain`) body (UTF-8 JSON), or an HTTPException naming what is
    wrong; `option` names the server option that sets `max_texts`."""
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise HTTPException(400, f"body is not UTF-8 (send JSON encoded as UTF-8): {USAGE}") from None
    except (json.JSONDecodeError, RecursionError) as err:
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
        check_text(name, text)
    return texts


def check_text(name: str, text: object) -> None:
    """A string with something visible in it, and valid Unicode (no lone surrogate such as "\\ud800")."""
    if not isinstance(text, str):
        kind = "null" if text is None else JSON_TYPES.get(type(text), type(text).__name__)
        raise HTTPException(422, f"{name} is {kind}, not a string")
    if not text.strip(INVISIBLE):  # str.strip: C speed, even on a million spaces
        raise HTTPException(
            422, f"{name} is empty (or only invisible characters): send some text to classify"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        where = f"{text[err.start]!r} at character {err.start}"
        raise HTTPException(422, f"{name} has a lone surrogate {where}: send valid Unicode") from None
