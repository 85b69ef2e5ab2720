"""The bare baselines the job system's overhead is measured against, in the same run:

- ``huey-consumer``: Huey's own consumer (one worker thread, as `df worker` runs) on the same
  queue backend and storage settings, running a task that does nothing;
- ``post-app``: a Starlette app under the same uvicorn settings as `df serve` whose POST /v1/jobs
  parses the JSON body, does one INSERT transaction (SQLAlchemy Core on the same URL, driver and
  SQLite pragmas) and one Huey enqueue, and answers 202 with the id.

The benchmarks start these as processes (queue_overhead.py, api_post.py); by hand:

    DF_DATABASE_URL=... DF_QUEUE_URL=... DF_QUEUE_NAME=... python benchmarks/bare.py post-app --port 8100
    DF_QUEUE_URL=... DF_QUEUE_NAME=... python benchmarks/bare.py huey-consumer
"""

from __future__ import annotations

import argparse
import os
import uuid
from pathlib import Path
from typing import Any

from huey import Huey


def queue_url() -> str:
    return os.environ.get("DF_QUEUE_URL") or f"sqlite:///{os.environ['DF_DATA_DIR']}/queue.db"


def bare_huey() -> tuple[Huey, Any]:
    """DreamForge's Huey (same storage, same settings), with a no-op task instead of a job."""
    from dreamforge.queue import make_huey

    huey = make_huey(queue_url(), os.environ.get("DF_QUEUE_NAME", "dreamforge"))

    @huey.task(name="noop")
    def noop(marker: str | None = None) -> None:
        if marker:
            Path(marker).touch()

    return huey, noop


def huey_consumer() -> None:
    # Through the module's own name: Huey names a task after its module, and the producer
    # imports this file as ``bare``, not ``__main__``.
    from bare import bare_huey as by_module_name
    from huey.consumer import Consumer

    huey, _ = by_module_name()
    # `df worker`'s consumer settings: one thread, constant 20 ms polling where pops can't block.
    Consumer(huey, workers=1, worker_type="thread", periodic=False, initial_delay=0.02, backoff=1.0,
             max_delay=0.02).run()


def post_app() -> Any:
    import sqlalchemy as sa
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    url = os.environ.get("DF_DATABASE_URL") or f"sqlite:///{os.environ['DF_DATA_DIR']}/bare.db"
    engine = sa.create_engine(url)
    if url.startswith("sqlite"):
        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:  # the job store's pragmas
            cur = dbapi_conn.cursor()
            for pragma in ("busy_timeout=30000", "journal_mode=WAL", "synchronous=NORMAL"):
                cur.execute(f"PRAGMA {pragma}")
            cur.close()
    table = sa.Table("bare_jobs", sa.MetaData(), sa.Column("id", sa.String(36), primary_key=True),
                     sa.Column("params", sa.JSON, nullable=False),
                     sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                               server_default=sa.func.current_timestamp()))
    table.metadata.create_all(engine)
    _, noop = bare_huey()

    def insert_and_enqueue(params: Any) -> str:
        job_id = str(uuid.uuid4())
        with engine.begin() as conn:
            conn.execute(table.insert().values(id=job_id, params=params))
        noop()
        return job_id

    async def create_job(request: Request) -> JSONResponse:
        job_id = await run_in_threadpool(insert_and_enqueue, await request.json())
        return JSONResponse({"id": job_id, "status": "queued"}, status_code=202)

    async def ready(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/v1/jobs", create_job, methods=["POST"]), Route("/readyz", ready)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["huey-consumer", "post-app"])
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    if args.what == "huey-consumer":
        huey_consumer()
        return
    import uvicorn

    # The settings `df serve` runs uvicorn with (dreamforge/cli/main.py).
    uvicorn.run(post_app(), host="127.0.0.1", port=args.port, log_level="info", access_log=True,
                timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
