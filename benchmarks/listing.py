"""GET /v1/jobs at 100,000 jobs on PostgreSQL: p50/p99 for a page of 50 with each filter and with
the cursor (page 2 onwards), through the app in-process (routing, validation, the service, the
store and JSON, without a socket).

Rows are bulk-inserted with SQL into a fresh schema (statuses, types and creation times spread
over 30 days), then ANALYZEd.

    python benchmarks/listing.py [--jobs 100000] [--runs 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scratch import percentile, scratch_schema

INSERT = """
INSERT INTO jobs (id, type, status, params, attempts, created_at, updated_at)
SELECT gen_random_uuid()::text,
       CASE WHEN g % 10 = 0 THEN 'img2img' ELSE 'generate' END,
       (ARRAY['queued','running','succeeded','succeeded','succeeded','failed','canceled'])[1 + g % 7],
       '{"prompt": "bench", "width": 64, "height": 64, "steps": 1, "guidance": 7.0, "seed": 1,
         "format": "png", "negative_prompt": null, "count": 1, "type": "generate"}'::json, 1,
       now() - (g * interval '26 seconds'), now()
FROM generate_series(1, :n) AS g
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    with scratch_schema() as (url, _schema), tempfile.TemporaryDirectory() as tmp:
        os.environ.update(DF_DATABASE_URL=url, DF_DATA_DIR=tmp, DF_FAKE_RUNNER="1",
                          DF_QUEUE_URL=f"sqlite:///{tmp}/q.db")
        from starlette.testclient import TestClient

        from dreamforge.server.app import create_app
        from dreamforge.settings import Settings

        with TestClient(create_app(Settings())) as client:  # the lifespan creates the schema
            engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
            t0 = time.perf_counter()
            with engine.connect() as conn:
                conn.execute(sa.text(INSERT), {"n": args.jobs})
                conn.execute(sa.text("ANALYZE jobs"))
            print(f"inserted {args.jobs} jobs in {time.perf_counter() - t0:.1f} s")
            engine.dispose()
            mid = client.get("/v1/jobs", params={"limit": 1, "created_before": "2100-01-01T00:00:00Z"}
                             ).json()["jobs"][0]["created_at"]
            first = client.get("/v1/jobs", params={"limit": 50}).json()
            cases = {
                "no filter": {},
                "status=failed": {"status": "failed"},
                "status=queued&status=running": {"status": ["queued", "running"]},
                "type=img2img": {"type": "img2img"},
                "created_after (recent)": {"created_after": "2000-01-01T00:00:00Z"},
                "created_before (15 days ago)": {"created_before": _days_before(mid, 15)},
                "status+type+created_before": {"status": "succeeded", "type": "generate",
                                               "created_before": _days_before(mid, 15)},
                "cursor (page 2)": {"cursor": first["next_cursor"]},
                "cursor (page 1000)": {"cursor": _deep_cursor(client, 1000)},
            }
            for name, params in cases.items():
                times = []
                for _ in range(args.runs):
                    t = time.perf_counter()
                    r = client.get("/v1/jobs", params={"limit": 50, **params})
                    times.append((time.perf_counter() - t) * 1000)
                    assert r.status_code == 200 and len(r.json()["jobs"]) == 50, (name, r.text[:300])
                print(f"{name:<32} p50 {statistics.median(times):6.1f} ms   p99 {percentile(times, 99):6.1f} ms")


def _days_before(iso: str, days: int) -> str:
    from datetime import datetime, timedelta

    return (datetime.fromisoformat(iso) - timedelta(days=days)).isoformat()


def _deep_cursor(client, pages: int) -> str:
    """The cursor after `pages` pages of 50, walked with limit=1000 (the same keyset)."""
    cursor = None
    for _ in range(pages * 50 // 1000):
        page = client.get("/v1/jobs", params={"limit": 1000, **({"cursor": cursor} if cursor else {})}).json()
        cursor = page["next_cursor"]
    return cursor


if __name__ == "__main__":
    main()
