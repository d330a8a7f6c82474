"""The floor arm of bench_serve.py: the same HTTP stack as our server (uvicorn, Starlette, the same
worker count and limits), answering POST /invocations with a constant body after reading the
request and parsing its JSON. No model, no records: the fastest any Python server on this stack
can answer the same request, what ours is compared with.

    python benchmarks/floor_server.py --port 5005 [--workers 1]
"""

from __future__ import annotations

import argparse
import json

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

ANSWER = b'{"predictions": [0]}'


async def invocations(request):
    json.loads(await request.body())
    return Response(ANSWER, 200, media_type="application/json")


async def ping(request):
    return Response("\n", 200, media_type="application/json")


def app() -> Starlette:
    return Starlette(routes=[Route("/invocations", invocations, methods=["POST"]), Route("/ping", ping, methods=["GET"])])


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    # serve.limits' defaults (conf/serve/default.yaml), as uvicorn gets them from our server
    uvicorn.run("floor_server:app", factory=True, host="127.0.0.1", port=args.port, workers=args.workers,
                log_level="warning", limit_concurrency=2000, backlog=2048, timeout_keep_alive=5,
                app_dir=str(__import__("pathlib").Path(__file__).resolve().parent))


if __name__ == "__main__":
    main()
