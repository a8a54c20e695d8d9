"""``document`` blocks become text before a request is translated, forwarded or counted.

Clients resend the whole history on every turn, so a document the gateway refused would
fail the conversation for good. Here, in one place for both modes and ``count_tokens``:

- ``source.type: text``     → its ``data``
- ``source.type: content``  → its text blocks (and images, which stay images)
- ``source.type: base64`` (``application/pdf``) or ``url`` → the PDF's text layer, each
  page marked ``[Page n of N]`` (:mod:`provisioner.gateway.pdf_text`); a PDF without
  one is a 400 that says so
- ``source.type: file``     → 400 (a Files API id: nothing here can resolve it)

A ``title`` and ``context`` go first. The text of a PDF is cached by its SHA-256 (and a
fetched URL for an hour), so the history a client resends costs nothing the second
time and is byte-identical, which keeps llama.cpp's prompt cache valid.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
from collections import OrderedDict
from typing import Any

import aiohttp

from provisioner.gateway.api_errors import invalid_request
from provisioner.gateway.pdf_text import PdfError, extract_pages, pages_as_text

#: how long a URL's text is reused (clients resend it every turn)
URL_TTL_S = 3600.0
URL_TIMEOUT_S = 30.0
CACHE_ENTRIES = 32


def _documents_in(body: Any) -> bool:
    """Cheap scan: does any user turn (or tool result in one) hold a document block?"""
    messages = body.get("messages") if isinstance(body, dict) else None
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else ():
            if not isinstance(block, dict):
                continue
            if block.get("type") == "document":
                return True
            inner = block.get("content") if block.get("type") == "tool_result" else None
            if isinstance(inner, list) and any(isinstance(b, dict) and b.get("type") == "document" for b in inner):
                return True
    return False


def _string(obj: dict, key: str, path: str, *, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise invalid_request(f"{path}.{key}: field required" if value is None
                              else f"{path}.{key}: expected a string, found {type(value).__name__}")
    return value


class DocumentReader:
    """Turns document blocks into text; owns the URL fetcher and the text cache."""

    def __init__(self, *, fetch_urls: bool, max_bytes: int) -> None:
        self.fetch_urls = fetch_urls
        self.max_bytes = max_bytes
        self._cache: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- the request body ------------------------------------------------------------------
    async def inline(self, body: Any) -> Any:
        """``body`` with every document block replaced by text (the same object if it has none)."""
        if not _documents_in(body):
            return body
        messages = []
        for i, message in enumerate(body["messages"]):
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list) and message.get("role") == "user":
                message = {**message, "content": await self._blocks(content, f"messages.{i}.content")}
            messages.append(message)
        return {**body, "messages": messages}

    async def _blocks(self, blocks: list, path: str) -> list:
        out: list = []
        for j, block in enumerate(blocks):
            if isinstance(block, dict) and block.get("type") == "document":
                out.extend(await self._document(block, f"{path}.{j}"))
            elif (isinstance(block, dict) and block.get("type") == "tool_result"
                  and isinstance(block.get("content"), list)):
                out.append({**block, "content": await self._blocks(block["content"], f"{path}.{j}.content")})
            else:
                out.append(block)
        return out

    async def _document(self, block: dict, path: str) -> list[dict]:
        source = block.get("source")
        if not isinstance(source, dict):
            raise invalid_request(f"{path}.source: expected an object")
        head = [t for t in (_string(block, "title", path, required=False),
                            _string(block, "context", path, required=False)) if t]
        if head and block.get("title"):
            head[0] = f"[Document: {head[0]}]"
        kind = source.get("type")
        spath = f"{path}.source"
        if kind == "text":
            return [{"type": "text", "text": "\n".join([*head, _string(source, "data", spath)])}]
        if kind == "content":
            inner = source.get("content")
            if isinstance(inner, str):
                inner = [{"type": "text", "text": inner}]
            if not isinstance(inner, list):
                raise invalid_request(f"{spath}.content: expected a string or a list of text and image blocks")
            for k, b in enumerate(inner):
                if not isinstance(b, dict) or b.get("type") not in ("text", "image"):
                    raise invalid_request(f"{spath}.content.{k}: expected a text or image block")
            return ([{"type": "text", "text": "\n".join(head)}] if head else []) + list(inner)
        if kind == "base64":
            media = _string(source, "media_type", spath)
            if media != "application/pdf":
                raise invalid_request(f"{spath}.media_type: expected 'application/pdf' for a base64 document, "
                                      f"found {media!r}")
            text = await self._pdf_from_base64(_string(source, "data", spath), spath)
        elif kind == "url":
            text = await self._pdf_from_url(_string(source, "url", spath), spath)
        elif kind == "file":
            raise invalid_request(f"{spath}.type: 'file' refers to Anthropic's Files API, which this gateway does "
                                  "not have; send the document inline (base64 or text)")
        else:
            raise invalid_request(f"{spath}.type: expected 'text', 'content', 'base64' or 'url', found {kind!r}")
        return [{"type": "text", "text": "\n".join([*head, text])}]

    # --- PDFs ------------------------------------------------------------------------------
    def _cached(self, key: str) -> str | None:
        hit = self._cache.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        self._cache.move_to_end(key)
        return hit[1]

    def _remember(self, key: str, text: str, ttl: float = float("inf")) -> None:
        self._cache[key] = (time.monotonic() + ttl, text)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)

    async def _pdf_text(self, data: bytes, path: str) -> str:
        key = "sha256:" + hashlib.sha256(data).hexdigest()
        text = self._cached(key)
        if text is None:
            try:
                # pypdf is pure Python: a large PDF takes a while, so not on the event loop
                pages = await asyncio.to_thread(extract_pages, data)
            except PdfError as exc:
                raise invalid_request(f"{path}: {exc}") from exc
            text = pages_as_text(pages)
            self._remember(key, text)
        return text

    async def _pdf_from_base64(self, data: str, path: str) -> str:
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise invalid_request(f"{path}.data: not valid base64") from exc
        return await self._pdf_text(raw, path)

    async def _pdf_from_url(self, url: str, path: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise invalid_request(f"{path}.url: expected an http:// or https:// URL")
        if not self.fetch_urls:
            raise invalid_request(f"{path}: this gateway does not fetch document URLs (fetch_document_urls is "
                                  "off); send the PDF as base64")
        key = "url:" + url
        text = self._cached(key)
        if text is None:
            text = await self._pdf_text(await self._fetch(url, path), path)
            self._remember(key, text, URL_TTL_S)
        return text

    async def _fetch(self, url: str, path: str) -> bytes:
        if self._session is None:
            # its own session: the upstream's carries the upstream key, which must never reach another host
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=URL_TIMEOUT_S))
        try:
            async with self._session.get(url) as response:
                if response.status != 200:
                    raise invalid_request(f"{path}.url: fetching the document answered HTTP {response.status}")
                data = await response.content.read(self.max_bytes + 1)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise invalid_request(f"{path}.url: fetching the document failed: {type(exc).__name__}") from exc
        if len(data) > self.max_bytes:
            raise invalid_request(f"{path}.url: the document is larger than {self.max_bytes} bytes")
        return data
