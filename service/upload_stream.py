"""A multipart upload streamed straight into the upload store, in bounded memory.

Starlette's `request.form()` spools file parts to a temporary file of its own (under /tmp,
which may be memory), to be copied again into storage. This reads the body as it comes with
python-multipart's streaming parser, hands the `file` part to a storage writer in chunks of
about WRITE_CHUNK (writes and hashing in the threadpool, off the event loop) and stops at
`limit` bytes: the process holds a few chunks, never the file, and never sees where it goes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from fastapi import HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from python_multipart.multipart import MultipartParser, parse_options_header

from spartan_service.jobs.storage import BlobWriter
from spartan_service.service.errors import field_error

WRITE_CHUNK = 1 << 20
FIELD = "file"


@dataclass
class Received:
    filename: str
    size: int
    sha256: str


class _Sink:
    """The `file` part's bytes: buffered up to WRITE_CHUNK, then written and hashed."""

    def __init__(self, f: BlobWriter) -> None:
        self.f = f
        self.hash = hashlib.sha256()
        self.buffer = bytearray()
        self.size = 0

    def flush_sync(self, data: bytes) -> None:
        self.hash.update(data)
        self.f.write(data)


def _filename(disposition: bytes) -> tuple[str | None, str | None]:
    """(field name, file name) of a part's Content-Disposition."""
    _, options = parse_options_header(disposition)
    name = options.get(b"name")
    filename = options.get(b"filename")
    return (name.decode("utf-8", "replace") if name is not None else None,
            filename.decode("utf-8", "replace") if filename is not None else None)


def clean_filename(raw: str) -> str:
    """Shown back to users only: no path, no control characters, bounded length, and text
    that encodes as UTF-8."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF)
    return name[:300]


def too_large(message: str) -> HTTPException:
    return HTTPException(status_code=status.HTTP_413_CONTENT_TOO_LARGE, detail=message)


async def receive_file(request: Request, out: BlobWriter, limit: int, limit_message: str
                       ) -> Received:
    """Stream the request's multipart `file` part into `out` (the caller commits or aborts
    it). 413 with `limit_message` beyond `limit` bytes; 422 on `["body", "file"]` when there
    is no such part."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise field_error(["body", FIELD], "send the file as multipart/form-data, field 'file'")
    return await _parse(request, boundary, _Sink(out), limit, limit_message)


async def _parse(request: Request, boundary: bytes, sink: _Sink, limit: int,
                 limit_message: str) -> Received:
    state = {"field": b"", "disposition": b"", "in_file": False, "done": False,
             "filename": None, "over": False}
    header_field = bytearray()
    header_value = bytearray()

    def on_part_begin() -> None:
        state["disposition"] = b""

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        if bytes(header_field).lower() == b"content-disposition":
            state["disposition"] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        name, filename = _filename(state["disposition"])  # type: ignore[arg-type]
        # The first `file` part is the upload; other parts are read past, not kept.
        state["in_file"] = name == FIELD and filename is not None and not state["done"]
        if state["in_file"]:
            state["filename"] = filename

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if not state["in_file"] or state["over"]:
            return
        sink.size += end - start
        if sink.size > limit:
            state["over"] = True
            return
        sink.buffer.extend(data[start:end])

    def on_part_end() -> None:
        if state["in_file"]:
            state["done"] = True
            state["in_file"] = False

    parser = MultipartParser(boundary, {  # type: ignore[arg-type]
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    })
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if state["over"]:
                raise too_large(limit_message)
            if len(sink.buffer) >= WRITE_CHUNK:
                data, sink.buffer = bytes(sink.buffer), bytearray()
                await run_in_threadpool(sink.flush_sync, data)
        parser.finalize()
    except HTTPException:
        raise
    except Exception as exc:  # python-multipart's errors on malformed bodies
        raise HTTPException(status_code=status.HTTP_400_BAD_REQUEST,
                            detail=f"malformed multipart body: {exc}") from None
    if not state["done"]:
        raise field_error(["body", FIELD], "Field required: a file part named 'file'")
    if sink.buffer:
        await run_in_threadpool(sink.flush_sync, bytes(sink.buffer))
        sink.buffer.clear()
    return Received(filename=clean_filename(str(state["filename"])), size=sink.size,
                    sha256=sink.hash.hexdigest())
