"""How the job store's reads grow, on PostgreSQL: a listing page against its size (linear now:
steps and artifacts are grouped by job id, not scanned per job), `df status` counts against the
table's size, and the orphan sweep with 20,000 queued jobs for the worker that holds the sweep's
lease against one that doesn't (one sweep per interval for the whole fleet).

    python benchmarks/store_scaling.py [--jobs 20000]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scratch import scratch_schema

JOBS = """
INSERT INTO jobs (id, type, status, params, attempts, created_at, updated_at)
SELECT gen_random_uuid()::text, 'generate', :status,
       '{"prompt": "bench", "width": 64, "height": 64, "steps": 1, "guidance": 7.0, "seed": 1,
         "format": "png", "negative_prompt": null, "count": 1, "type": "generate"}'::json, 1,
       now() - (g * interval '1 second') - interval '1 hour', now() - interval '1 hour'
FROM generate_series(1, :n) AS g
"""
STEPS = """
INSERT INTO steps (job_id, name, status, progress_current, progress_total)
SELECT id, 'generate', status, 1, 1 FROM jobs
"""
ARTIFACTS = """
INSERT INTO artifacts (job_id, step_id, item_index, seed, width, height, format, s3_key, size_bytes, sha256,
                       created_at)
SELECT s.job_id, s.id, 0, 1, 64, 64, 'png', 'dreamforge/default/jobs/' || s.job_id || '/generate/x.png', 1, 'x',
       now()
FROM steps s JOIN jobs j ON j.id = s.job_id WHERE j.status = 'succeeded'
"""


def timed(call, runs: int = 7) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the sweep logs each job it re-enqueues
    with scratch_schema() as (url, _schema), tempfile.TemporaryDirectory() as tmp:
        os.environ.update(DF_DATABASE_URL=url, DF_DATA_DIR=tmp, DF_FAKE_RUNNER="1",
                          DF_QUEUE_URL=f"sqlite:///{tmp}/q.db", DF_WORKER_TIMEOUT_S="1",
                          DF_HEARTBEAT_INTERVAL_S="0.5")
        from dreamforge.service import JobService
        from dreamforge.settings import Settings

        svc = JobService.from_settings(Settings())
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")

        def fill(n: int, status: str) -> None:
            with engine.connect() as conn:
                conn.execute(sa.text("TRUNCATE jobs CASCADE"))
                conn.execute(sa.text(JOBS), {"n": n, "status": status})
                conn.execute(sa.text(STEPS))
                conn.execute(sa.text(ARTIFACTS))
                conn.execute(sa.text("ANALYZE"))

        fill(args.jobs, "succeeded")
        print(f"listing, {args.jobs} succeeded jobs with a step and an artifact each (median of 7):")
        small = timed(lambda: svc.list_jobs(limit=100))
        large = timed(lambda: svc.list_jobs(limit=1000))
        print(f"  page of 100: {small:.1f} ms   page of 1000: {large:.1f} ms   ratio {large / small:.1f} "
              "(10 = linear)")
        counts = {}
        for n in (args.jobs, args.jobs * 5):
            fill(n, "succeeded")
            counts[n] = timed(svc.job_store.counts)
        a, b = counts.values()
        print(f"  df status counts: {a:.1f} ms at {args.jobs}, {b:.1f} ms at {args.jobs * 5} "
              f"(ratio {b / a:.1f}; a GROUP BY over the status index)")

        fill(args.jobs, "queued")
        pending = len(svc.queue.pending_job_ids())
        holder = timed(lambda: (svc.job_store.take_lease("orphan-sweep", "elsewhere", -1),
                                svc.requeue_orphans("bench")), runs=3)
        svc.job_store.take_lease("orphan-sweep", "another worker", 3600)
        others = timed(lambda: svc.requeue_orphans("bench"), runs=7)
        print(f"orphan sweep, {args.jobs} queued jobs ({pending} messages before the first sweep):")
        print(f"  the lease holder: {holder:.1f} ms per sweep (re-enqueues up to 1,000 of the oldest)")
        print(f"  every other worker: {others:.2f} ms (the lease is taken: one UPDATE)")
        svc.close()
        engine.dispose()


if __name__ == "__main__":
    main()
