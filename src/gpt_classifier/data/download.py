"""Downloads that only ever land whole and verified: streamed with a progress bar, checked by sha256."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from gpt_classifier.errors import GPTClassifierError

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("GPT_CLASSIFIER_CACHE", Path.home() / ".cache" / "gpt-classifier"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str, timeout: float = 30.0) -> Path:
    """Stream `url` to `dest` with a progress bar; only a file with the right sha256 ever lands."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != sha256:
            raise GPTClassifierError(
                f"checksum mismatch for {url}: got sha256 {digest.hexdigest()}, expected {sha256}; "
                "the file was discarded"
            )
        os.replace(tmp_name, dest)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    return dest


def fetch_verified(urls: Sequence[str], dest: Path, sha256: str) -> tuple[Path | None, list[str]]:
    """`dest` when it already holds the file with `sha256`, else the first of `urls` that downloads it
    verified; None when none does, with each url's failure (the caller falls back or says so)."""
    if dest.is_file() and sha256_of(dest) == sha256:
        return dest, []
    failures = []
    for url in urls:
        try:
            return download(url, dest, sha256), []
        except (urllib.error.URLError, OSError, GPTClassifierError) as err:
            reason = getattr(err, "reason", err)
            failures.append(f"{url}: {reason}")
            log.info("download from %s failed: %s", url, reason)
    return None, failures
