"""A small closed-loop HTTP load generator: N concurrent keep-alive clients, each sending the
same POST as soon as its previous answer arrived, for a fixed duration. Plain asyncio streams
(HTTP/1.1, Content-Length bodies), so the generator itself costs little CPU on a 2-core machine.

    python benchmarks/loadgen.py http://127.0.0.1:5001/invocations body.json --clients 50 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit

import numpy as np


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:].strip())
    if length:
        await reader.readexactly(length)
    return status


def build_request(url: str, body: bytes, content_type: str = "application/json",
                  headers: dict[str, str] | None = None) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode()
    return parts.hostname, parts.port, head + body


async def _client(host: str, port: int, request: bytes, stop_at: float, latencies: list, errors: list,
                  timeout: float) -> None:
    reader = writer = None
    while time.perf_counter() < stop_at:
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            started = time.perf_counter()
            writer.write(request)
            status = await asyncio.wait_for(_read_response(reader), timeout)
            if status == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors.append(str(status))
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, TimeoutError, ValueError) as exc:
            errors.append(type(exc).__name__)
            if writer is not None:
                writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def run_load(url: str, body: bytes, clients: int, seconds: float, timeout: float = 30,
                   headers: dict[str, str] | None = None) -> dict:
    host, port, request = build_request(url, body, headers=headers)
    latencies: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(_client(host, port, request, stop_at, latencies, errors, timeout) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    lat = np.asarray(latencies) * 1000
    return {"clients": clients, "seconds": round(elapsed, 2), "requests": len(latencies),
            "rps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
            "errors": len(errors), "error_kinds": sorted(set(errors))[:5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("body", help="a file with the request body (JSON)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    with open(args.body, "rb") as fh:
        body = fh.read()
    print(json.dumps(asyncio.run(run_load(args.url, body, args.clients, args.seconds))))


if __name__ == "__main__":
    main()
