"""A closed-loop HTTP/1.1 load generator on raw asyncio streams (keep-alive GETs).

httpx costs a millisecond or more of client CPU per request; on a 2-core machine shared with
the server, the client then measures itself. This one writes a fixed request and reads the
status line, headers and Content-Length body: tens of microseconds per request.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]

    def summary(self) -> dict[str, float]:
        return {"requests": len(self.latencies), "errors": self.errors,
                "per_s": len(self.latencies) / self.seconds,
                "p50_ms": 1e3 * self.pct(50), "p99_ms": 1e3 * self.pct(99),
                "max_ms": 1e3 * max(self.latencies, default=float("nan"))}


async def _one_client(host: str, port: int, request: bytes, end: float, load: Load) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while (t0 := time.perf_counter()) < end:
            writer.write(request)
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            load.latencies.append(time.perf_counter() - t0)
            if not status.startswith(b"HTTP/1.1 200"):
                load.errors += 1
    finally:
        writer.close()


async def closed_loop(host: str, port: int, path: str, clients: int, seconds: float,
                      headers: dict[str, str] | None = None) -> Load:
    """`clients` connections, each sending its next GET as soon as the last one is answered."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()
    load = Load(seconds=seconds)
    end = time.perf_counter() + seconds
    await asyncio.gather(*(_one_client(host, port, request, end, load) for _ in range(clients)))
    return load
