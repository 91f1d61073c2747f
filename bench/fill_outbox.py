#!/usr/bin/env python
"""Fill an empty outbox by id range, in several processes, to reach the steady state sooner.

`bench/planning.py` measures the re-plan (the no-change sweep every 15 minutes) on an
outbox its first run filled. At 1,000,000 pumps one first run takes about an hour on a
2-core machine, so this fills the outbox with the very service call `plan_all` makes
(`notifications.services.reconcile_pumps`, batches of 500 active pumps in id order), over
one id range per process, so several processes share the work; `--follow` waits for
pumps a still-running generator has not committed yet (it commits 1,000 patients with
their histories a transaction, so a committed pump is complete). The result is the outbox
one `plan_all` would have written: the re-plan after it must create, update and cancel
nothing (planning.py prints those counts). Its timings are not `plan_all`'s first run.

    DATABASE_URL=postgres://app:app@127.0.0.1:5432/bench_1m SECRET_KEY=x \\
        .venv/bin/python bench/fill_outbox.py --from-id 1 --to-id 500000 --follow > /dev/null

Progress goes to stderr; stdout gets the console email backend's escalation emails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-id", type=int, required=True, help="first pump id (inclusive)")
    parser.add_argument("--to-id", type=int, required=True, help="last pump id (inclusive)")
    parser.add_argument("--now", default="2027-03-01T15:00:00+00:00", help="as bench/planning.py")
    parser.add_argument("--batch", type=int, default=500, help="as plan_all's default")
    parser.add_argument(
        "--follow", action="store_true", help="a generator is still writing: wait until the range's last id is committed"
    )
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pumptrack.settings")
    sys.path.insert(0, str(ROOT))
    import logging

    import django

    django.setup()
    from django.db import connection

    from notifications import services
    from notifications.models import Message
    from pumps.models import Pump

    name = connection.settings_dict["NAME"]
    if not re.fullmatch(r"bench_[a-z0-9_]+", name):
        raise SystemExit(f"refusing to write the outbox of {name!r}: not a bench_ database")
    if Message.objects.filter(pump_id__gte=args.from_id, pump_id__lte=args.to_id).exists():
        raise SystemExit("the outbox already holds messages in this id range: this fills an empty outbox only")
    logging.getLogger("notifications").setLevel(logging.ERROR)  # one warning line per escalation otherwise
    now = datetime.fromisoformat(args.now)
    total = services.ReconcileResult()
    started, cpu_started = time.perf_counter(), time.process_time()
    last, pumps, batches = args.from_id - 1, 0, 0
    while True:
        batch = list(
            Pump.objects.filter(status="active", pk__gt=last, pk__lte=args.to_id)
            .order_by("pk")
            .values_list("pk", flat=True)[: args.batch]
        )
        # Following a generator: a short batch may only mean the next pumps are not
        # committed yet; wait until the whole range is (one generator process commits
        # batches in id order, so the highest committed id bounds what is complete).
        if args.follow and len(batch) < args.batch:
            highest = Pump.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
            if highest < args.to_id:
                time.sleep(5)
                continue
        if not batch:
            break
        total += services.reconcile_pumps(batch, now)
        last, pumps, batches = batch[-1], pumps + len(batch), batches + 1
        if batches % 20 == 0:
            print(
                f"{time.strftime('%H:%M:%S')} last id {last:,}: {pumps:,} pumps, {total.created:,} messages, "
                f"{time.perf_counter() - started:.0f} s, cpu {time.process_time() - cpu_started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    summary = {
        "from_id": args.from_id,
        "to_id": args.to_id,
        "pumps": pumps,
        "seconds": time.perf_counter() - started,
        "cpu": time.process_time() - cpu_started,
        "created": total.created,
        "updated": total.updated,
        "cancelled": total.cancelled,
        "escalations": total.escalations,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(summary), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
