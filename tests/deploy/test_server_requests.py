"""The server's request parsing in-process: `parse_texts` (every reason, the `--max-texts` edge, and
any JSON or bytes at all: texts or a one-line 4xx, never another exception) and `read_body` (the
declared and streamed size against `--max-body-bytes`, at the byte)."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.exceptions import HTTPException
from starlette.requests import Request

from gpt_classifier.deploy.request_body import INVISIBLE, USAGE, parse_texts, read_body
from gpt_classifier.deploy.server import Limits


def refusal(body: bytes, max_texts: int = 4) -> tuple[int, str]:
    with pytest.raises(HTTPException) as caught:
        parse_texts(body, max_texts)
    return caught.value.status_code, caught.value.detail


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (b'["a"]', 422, f"body is a list: {USAGE}"),
        (b"3", 422, f"body is a number: {USAGE}"),
        (b"2.5", 422, f"body is a number: {USAGE}"),
        (b"true", 422, f"body is a boolean: {USAGE}"),
        (b'"text"', 422, f"body is not an object: {USAGE}"),
        (b"null", 422, f"body is not an object: {USAGE}"),
        (b"{}", 422, f"no texts: {USAGE}"),
        (b'{"txt": "a", "zzz": 1}', 422, f"unknown key 'txt': {USAGE}"),
        (b'{"text": "a", "other": 1}', 422, f"unknown key 'other': {USAGE}"),
        (b'{"text": "a", "texts": ["b"]}', 422, f"both text and texts: {USAGE}"),
        (b'{"texts": "a"}', 422, f"texts is not a list: {USAGE}"),
        (b'{"texts": {"a": 1}}', 422, f"texts is an object: {USAGE}"),
        (b'{"texts": 7}', 422, f"texts is a number: {USAGE}"),
        (b'{"texts": []}', 422, f"texts is an empty list: {USAGE}"),
        (b'{"texts": ["a", false]}', 422, "texts[1] is a boolean, not a string"),
        (b'{"texts": ["a", "b", [1]]}', 422, "texts[2] is a list, not a string"),
        (b'{"texts": [null]}', 422, "texts[0] is null, not a string"),
        (b'{"text": 1.5}', 422, "text is a number, not a string"),
        (
            b'{"text": " \\t\\n"}',
            422,
            "text is empty (or only invisible characters): send some text to classify",
        ),
        (
            b'{"texts": ["a", ""]}',
            422,
            "texts[1] is empty (or only invisible characters): send some text to classify",
        ),
    ],
)
def test_each_bad_body_gets_its_reason(body, status, detail):
    assert refusal(body) == (status, detail)


@pytest.mark.parametrize("body", [b"", b"{", b"[" * 100_000, b'{"text": "a"} x'])
def test_bodies_that_are_not_json(body):
    status, detail = refusal(body)
    assert status == 400 and detail.startswith("body is not valid JSON (") and detail.endswith(f"): {USAGE}")


@pytest.mark.parametrize("body", [b"\xff\xfe", '{"text": "a"}'.encode("utf-16")])
def test_bodies_that_are_not_utf8(body):
    assert refusal(body) == (400, f"body is not UTF-8 (send JSON encoded as UTF-8): {USAGE}")


def test_max_texts_at_its_edge():
    at_limit = json.dumps({"texts": ["a", "b", "c"]}).encode()
    assert parse_texts(at_limit, max_texts=3) == ["a", "b", "c"]
    over = json.dumps({"texts": ["a", "b", "c", "d"]}).encode()
    assert refusal(over, max_texts=3) == (
        413,
        "4 texts is over the limit of 3 per request (--max-texts): send them in several requests",
    )


def test_one_text_or_a_list():
    assert parse_texts(b'{"text": " hi "}', max_texts=1) == [" hi "]  # as typed, not stripped
    assert parse_texts(b'{"texts": ["x", "y"]}', max_texts=2) == ["x", "y"]


def test_the_default_limits():
    assert Limits() == Limits(max_batch_size=32, max_wait_ms=5.0, max_body_bytes=1_000_000, max_texts=256)


texts_strategy = st.lists(
    st.text(min_size=1).filter(lambda text: text.strip(INVISIBLE)), min_size=1, max_size=8
)


@settings(max_examples=80, deadline=None)
@given(texts_strategy)
def test_any_list_of_texts_comes_back_as_sent(texts):
    assert parse_texts(json.dumps({"texts": texts}).encode(), max_texts=8) == texts
    assert parse_texts(json.dumps({"text": texts[0]}, ensure_ascii=False).encode(), max_texts=1) == texts[:1]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["text", "texts", "x"]), inner)
    ),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_any_json_gives_texts_or_a_one_line_client_error(value):
    try:
        texts = parse_texts(json.dumps(value).encode(), max_texts=3)
    except HTTPException as err:
        assert err.status_code in (400, 413, 422) and "\n" not in err.detail
    else:
        assert 1 <= len(texts) <= 3 and all(isinstance(t, str) and t.strip() for t in texts)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_give_texts_or_a_client_error(body):
    try:
        parse_texts(body, max_texts=3)
    except HTTPException as err:
        assert err.status_code in (400, 413, 422)


def request_with(chunks: list[bytes], content_length: str | None) -> tuple[Request, list[int]]:
    """A Starlette request whose body arrives in `chunks`; the list counts the chunks read."""
    headers = [] if content_length is None else [(b"content-length", content_length.encode())]
    pending, read = list(chunks), []

    async def receive() -> dict:
        read.append(1)
        body = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    return Request({"type": "http", "method": "POST", "headers": headers}, receive), read


def body_read(chunks: list[bytes], content_length: str | None, limit: int) -> bytes:
    return asyncio.run(read_body(request_with(chunks, content_length)[0], limit, timeout_s=30))


TOO_BIG = "request body over the limit of 10 bytes (--max-body-bytes): send fewer or shorter texts"


@pytest.mark.parametrize("declared", ["10", None, "", "ten"])
def test_a_body_of_exactly_the_limit_is_read(declared):
    assert body_read([b"0123", b"456789"], declared, limit=10) == b"0123456789"


@pytest.mark.parametrize("declared", [None, "10", "abc"])
def test_a_streamed_body_one_byte_over_is_refused(declared):
    with pytest.raises(HTTPException) as caught:
        body_read([b"01234", b"56789", b"x"], declared, limit=10)
    assert (caught.value.status_code, caught.value.detail) == (413, TOO_BIG)


@pytest.mark.parametrize("declared", ["11", str(10**15)])
def test_a_declared_size_over_the_limit_is_refused_unread(declared):
    request, read = request_with([b"0123456789x"], declared)
    with pytest.raises(HTTPException) as caught:
        asyncio.run(read_body(request, 10, timeout_s=30))
    assert (caught.value.status_code, caught.value.detail) == (413, TOO_BIG)
    assert read == []  # not one chunk read


def test_the_refusal_comes_at_the_chunk_that_crosses_the_limit():
    request, read = request_with([b"01234", b"567890", b"never", b"read"], None)
    with pytest.raises(HTTPException):
        asyncio.run(read_body(request, 10, timeout_s=30))
    assert len(read) == 2
