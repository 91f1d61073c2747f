#!/usr/bin/env python
"""Benchmark: API list endpoints under gunicorn against bare Django views (issue 6).

Starts `gunicorn pumptrack.wsgi` (sync workers, `--workers`) with the settings module
`bench.api_settings` (the application's settings and URLs, plus the bare views of
`bench.api_urls`), against a database made by `bench/generate.py` (and planned by
`bench/planning.py`, for messages and escalations). For each list call it first checks
that the API and the bare view return the same row ids, then sends `--requests` requests
from `--clients` threads (a new HTTP connection each: gunicorn's sync workers close
them), the API call and its bare view alternating case by case, and reports p50, p99 and
requests a second with the ratio API ÷ bare.

The API runs as deployed (token authentication, clinic scoping, permissions, filters,
serializers, page counts) except throttling: `API_THROTTLE_RATE` is raised so the figure
is the API's cost, not the 600/min limit. The token belongs to one clinic's clinician.

    DATABASE_URL=postgres://app:app@127.0.0.1:5432/bench_100k SECRET_KEY=x \\
        .venv/bin/python bench/api.py --requests 400 --clients 4

See bench/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def setup(username: str) -> tuple[str, int, int]:
    """A fresh token for `username` (an existing clinic user), its clinic and a pump with refills."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pumptrack.settings")
    sys.path.insert(0, str(ROOT))
    django.setup()
    from django.contrib.auth import get_user_model

    from api.models import ApiToken
    from api.services import issue_token
    from patients.models import Membership
    from pumps.models import Pump

    user = get_user_model().objects.get(username=username)
    # Databases generated before bench/generate.py marked its clinic users as staff.
    get_user_model().objects.filter(pk=user.pk).update(is_staff=True)
    ApiToken.objects.filter(user=user, name="bench/api.py").delete()
    _, key = issue_token(user=user, name="bench/api.py", by=None)
    clinic = Membership.objects.filter(user=user).values_list("clinic_id", flat=True).first()
    if clinic is None:
        raise SystemExit(f"{username} has no clinic")
    pump = Pump.objects.filter(patient__clinic=clinic, status="active").order_by("pk").values_list("pk", flat=True).first()
    return key, clinic, pump or 0


def get(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def hammer(port: int, path: str, headers: dict[str, str], total: int, clients: int) -> dict[str, float]:
    """`total` GETs from `clients` threads; latencies in ms, requests a second, errors."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    left = [total]

    def work() -> None:
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            started = time.perf_counter()
            status, _ = get(port, path, headers)
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                latencies.append(elapsed)
                errors[0] += status != 200

    threads = [threading.Thread(target=work) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100)
    return {"p50": statistics.median(latencies), "p99": cuts[98], "rps": total / wall, "errors": errors[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--user", default="l-0-clinician", help="a generated clinic user (bench/generate.py names them)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers")
    parser.add_argument("--clients", type=int, default=4, help="client threads")
    parser.add_argument("--requests", type=int, default=400, help="requests per call and side")
    parser.add_argument("--page-size", type=int, default=50)
    parser.add_argument("--json", help="also write the raw figures to this file")
    args = parser.parse_args()

    key, clinic, pump = setup(args.user)
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.api_settings",
        "API_THROTTLE_RATE": "100000000/min",
        "PYTHONPATH": str(ROOT),
    }
    server = subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
        [sys.executable, "-m", "gunicorn", "pumptrack.wsgi:application", "--workers", str(args.workers),
         "--bind", f"127.0.0.1:{port}", "--log-level", "warning", "--timeout", "120"],
        cwd=ROOT, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get(port, "/healthz", {})
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("gunicorn did not start") from None
                time.sleep(0.3)
        auth = {"Authorization": f"Token {key}", "Accept": "application/json"}
        size = f"page_size={args.page_size}"
        cases = [
            ("pumps", f"/api/v1/pumps/?{size}", f"/bench/bare/pumps/?clinic={clinic}&{size}"),
            (
                "pumps?due_within=120",
                f"/api/v1/pumps/?due_within=120&{size}",
                f"/bench/bare/pumps/?clinic={clinic}&due_within=120&{size}",
            ),
            ("refills", f"/api/v1/refills/?{size}", f"/bench/bare/refills/?clinic={clinic}&{size}"),
            (
                "refills?pump=<one pump>",
                f"/api/v1/refills/?pump={pump}&{size}",
                f"/bench/bare/refills/?clinic={clinic}&pump={pump}&{size}",
            ),
            (
                "messages?status=planned",
                f"/api/v1/messages/?status=planned&{size}",
                f"/bench/bare/messages/?clinic={clinic}&status=planned&{size}",
            ),
            ("escalations", f"/api/v1/escalations/?{size}", f"/bench/bare/escalations/?clinic={clinic}&{size}"),
        ]
        rows = []
        for name, api_path, bare_path in cases:
            status_a, body_a = get(port, api_path, auth)
            status_b, body_b = get(port, bare_path, {})
            if status_a != 200 or status_b != 200:
                raise SystemExit(f"{name}: {status_a} {body_a[:300]!r} / {status_b} {body_b[:300]!r}")
            ids_a = [r["id"] for r in json.loads(body_a)["results"]]
            ids_b = [r["id"] for r in json.loads(body_b)["results"]]
            same = ids_a == ids_b
            for _ in range(10):  # warm both workers
                get(port, api_path, auth)
                get(port, bare_path, {})
            api = hammer(port, api_path, auth, args.requests, args.clients)
            bare = hammer(port, bare_path, {}, args.requests, args.clients)
            rows.append({"call": name, "rows": len(ids_a), "same": same, "api": api, "bare": bare})
            print(f"  {name}: {len(ids_a)} rows, same={same}, api {api}, bare {bare}", file=sys.stderr, flush=True)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

    print(
        f"| call ({args.page_size} a page) | rows | same rows | API p50 ms | p99 ms | req/s | bare p50 ms | p99 ms | req/s "
        "| ratio p50 | ratio req/s (bare ÷ API) | errors |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        a, b = r["api"], r["bare"]
        print(
            f"| `{r['call']}` | {r['rows']} | {'yes' if r['same'] else 'NO'} | {a['p50']:.1f} | {a['p99']:.1f} | {a['rps']:.1f} "
            f"| {b['p50']:.1f} | {b['p99']:.1f} | {b['rps']:.1f} | {a['p50'] / b['p50']:.1f}× | {b['rps'] / a['rps']:.1f}× "
            f"| {int(a['errors'] + b['errors'])} |"
        )
    print(f"\nload average after: {os.getloadavg()}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
