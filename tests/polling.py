"""Waiting for things the tests start: one poller, with a deadline and a message that says what
never happened."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

from dreamforge.service import JobService

T = TypeVar("T")


def wait_until(check: Callable[[], T], what: str, timeout: float = 30, every: float = 0.02) -> T:
    """Call ``check`` until it returns something truthy; that value, or AssertionError naming
    ``what`` once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def wait_status(svc: JobService, job_id: str, status: str, timeout: float = 30) -> None:
    wait_until(lambda: svc.get(job_id).status.value == status, f"job {job_id} to be {status}", timeout)


def wait_terminal(svc: JobService, ids: list[str], timeout: float = 90) -> Counter:
    """How the jobs ended (a Counter of statuses), once none is queued or running, or at the
    deadline (then the Counter shows what was left)."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = Counter(svc.get(i).status.value for i in ids)
        if statuses["queued"] == statuses["running"] == 0 or time.monotonic() > deadline:
            return statuses
        time.sleep(0.05)


def runs_of(svc: JobService, job_id: str) -> list[str]:
    """The worker of each run the job had, in order."""
    return [e["payload"]["worker_id"] for e in svc.events(job_id)
            if e["kind"] == "status" and e["payload"].get("status") == "running"]
