"""`python -m mlpipe.team traffic --url http://127.0.0.1:5001 [overrides...]`: replay rows of a
dataset against a running model server, each request's true labels sent to its `/feedback` a
delay later: the traffic an A/B test needs, without writing code (docs/team.md).

The rows are the team evaluation set (data.holdout_fraction, no member trained on them) when the
config holds rows out, else every row of `data.source`; `data=<name>` and any other override
choose them. It stops after `--requests` requests or `--seconds` seconds, whichever comes first,
at `--rate` requests a second (0: each as soon as the last one was answered)."""

from __future__ import annotations

import argparse
import collections
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import numpy as np

from mlpipe.errors import ConfigError, StorageError


@dataclass
class Sent:
    """What the replay did: requests per arm (the server's X-Variant), labels sent, seconds."""

    arms: collections.Counter = field(default_factory=collections.Counter)
    labels: int = 0
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return sum(self.arms.values())


def replay(url: str, features, labels, *, requests: int | None, seconds: float | None, rate: float,
           rows_per_request: int, delay_s: float, seed: int, on_half=None, feedback: bool = True) -> Sent:
    """POST `rows_per_request` rows drawn from `features` to `url`/invocations; their labels go to
    /feedback `delay_s` later (a queue of due labels, all sent before it returns)."""
    if requests is None and seconds is None:
        raise ConfigError("traffic: give --requests N or --seconds T (or both: whichever comes first)")
    rng, due, sent = np.random.default_rng(seed), collections.deque(), Sent()
    started = time.monotonic()
    half = requests // 2 if requests else None

    def send_due(now: float) -> None:
        while due and due[0][0] <= now:
            _, request_id, token, label = due.popleft()
            _post(url, "/feedback", {"request_id": request_id, "token": token, "label": label})
            sent.labels += 1

    i = 0
    while (requests is None or i < requests) and (seconds is None or time.monotonic() - started < seconds):
        if rate > 0:  # the i-th request leaves at started + i / rate
            time.sleep(max(0.0, started + i / rate - time.monotonic()))
        picked = rng.integers(0, len(features), rows_per_request)
        payload = {"dataframe_split": json.loads(features.iloc[picked].to_json(orient="split", index=False))}
        headers = _post(url, "/invocations", payload)
        sent.arms[headers.get("X-Variant", "-")] += 1
        if feedback:
            if not headers.get("X-Request-Id"):
                raise StorageError(f"traffic: {url} answers without X-Request-Id, so it takes no /feedback (not this "
                                   "project's server: mlflow run . -e serve); use --no-feedback to send requests only")
            due.append((time.monotonic() + delay_s, headers["X-Request-Id"], headers.get("X-Feedback-Token"),
                        labels.iloc[picked].tolist()))
        send_due(time.monotonic())
        i += 1
        if on_half and i - 1 == half:
            on_half()
    while due:
        time.sleep(max(0.0, due[0][0] - time.monotonic()))
        send_due(time.monotonic())
    sent.seconds = time.monotonic() - started
    return sent


def _post(url: str, path: str, payload: dict):
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return response.headers
    except urllib.error.HTTPError as exc:
        raise StorageError(f"traffic: {url}{path} answered HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}"
                           ) from None
    except OSError as exc:
        raise StorageError(f"traffic: no model server answers at {url} ({getattr(exc, 'reason', exc)}); start one "
                           "(mlflow run . -e serve) or give its address with --url") from None


def rows_of(overrides: list[str]):
    """(features, labels): the held-out team evaluation set when the config holds rows out, else
    every row of data.source."""
    from mlpipe.config import compose
    from mlpipe.data import sources
    from mlpipe.team.report import holdout

    cfg = compose(["team.member=${team.lead}", *overrides])  # rows, not a login: any member reads them
    if cfg.data.holdout_fraction > 0:
        return (*holdout(cfg.data), "held-out")
    frame = sources.load_source(cfg.data.source)
    return frame.drop(columns=[cfg.data.target]), frame[cfg.data.target], "all"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlpipe.team traffic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:5001", help="the model server (serve.port 5001)")
    parser.add_argument("--requests", type=int, default=None, help="stop after this many requests")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--rate", type=float, default=0.0, help="requests a second (0: back to back)")
    parser.add_argument("--rows-per-request", type=int, default=5)
    parser.add_argument("--feedback-delay-s", type=float, default=2.0, help="labels sent this long after each answer")
    parser.add_argument("--no-feedback", action="store_true", help="send no labels")
    parser.add_argument("--seed", type=int, default=0)
    args, overrides = parser.parse_known_args(argv)
    if args.requests is None and args.seconds is None:
        raise ConfigError("traffic: give --requests N or --seconds T (or both: whichever comes first)")
    features, labels, which = rows_of(overrides)
    print(f"[mlpipe] traffic: {which} rows ({len(features)}) to {args.url}, {args.rows_per_request} a request, "
          + (f"{args.rate:g} a second" if args.rate > 0 else "back to back")
          + ("" if args.no_feedback else f", true labels {args.feedback_delay_s:g} s later"), flush=True)
    sent = replay(args.url.rstrip("/"), features, labels, requests=args.requests, seconds=args.seconds, rate=args.rate,
                  rows_per_request=args.rows_per_request, delay_s=args.feedback_delay_s, seed=args.seed,
                  feedback=not args.no_feedback)
    print(f"[mlpipe] traffic: {sent.requests} requests in {sent.seconds:.1f} s, per arm {dict(sent.arms)}; "
          f"{sent.labels} labelled", flush=True)
    return 0
