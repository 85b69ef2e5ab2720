"""The finishing stage: a job's images are encoded, uploaded and recorded while the runner makes
the next job's. In-process with the real job service, stores and Executor (an artifact store
whose writes wait on a gate holds a job in the stage for as long as a test needs), and with real
`df worker` processes for the crash in that window."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future

import pytest

from dreamforge.artifact_store import ArtifactStore
from dreamforge.execution import Executor
from dreamforge.runners.fake import FakeRunner
from dreamforge.schemas import parse_request
from dreamforge.service import JobService
from dreamforge.settings import Settings
from dreamforge.worker import WorkerRuntime
from tests.polling import runs_of, wait_terminal, wait_until
from tests.test_fencing import stored_objects

FAST_RECLAIM = {"DF_HEARTBEAT_INTERVAL_S": "0.3", "DF_WORKER_TIMEOUT_S": "2",
                "DF_ORPHAN_SWEEP_INTERVAL_S": "1"}


def request(prompt: str, steps: int = 2, size: int = 64, count: int = 1):
    return parse_request({"prompt": prompt, "width": size, "height": size, "steps": steps, "seed": 7,
                          "count": count})


class GatedPuts:
    """The real artifact store, but every write waits until the gate opens."""

    def __init__(self, real: ArtifactStore):
        self.real = real
        self.gate = threading.Event()
        self.waiting = threading.Event()

    def put(self, key: str, data: bytes, content_type: str, sha256: str) -> None:
        self.waiting.set()
        assert self.gate.wait(30), "the test never opened the gate"
        self.real.put(key, data, content_type, sha256)

    def __getattr__(self, name: str):
        return getattr(self.real, name)


@pytest.fixture
def gated(df_env) -> Iterator[tuple[JobService, GatedPuts]]:
    svc = JobService.from_settings(Settings())
    store = GatedPuts(svc.artifact_store)
    yield JobService(svc.settings, svc.job_store, svc.queue, store), store
    store.gate.set()


def generated(svc: JobService, job_id: str) -> bool:
    progress = svc.get(job_id).steps[0].progress
    return progress.current == progress.total


def in_thread(call) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    return thread, result


def gauges() -> tuple[float, float]:
    """This process's busy slots and jobs in the finishing stage."""
    from dreamforge import metrics

    found = {sample.name: sample.value for family in metrics.registry().collect() for sample in family.samples}
    return found["dreamforge_worker_busy_slots"], found["dreamforge_worker_finishing_jobs"]


def test_the_next_job_generates_while_the_last_ones_images_are_stored(gated):
    svc, store = gated
    executor = Executor(svc, FakeRunner(), "worker:test:1:overlap")
    first, second, third = (svc.submit(request(name)).view.id for name in ("first", "second", "third"))

    busy, finishing = gauges()
    stored_first = executor.start(first)
    assert isinstance(stored_first, Future)
    assert store.waiting.wait(10)
    assert not stored_first.done() and svc.get(first).status.value == "running"
    # The job's slot is free for the next one while its images are stored.
    assert gauges() == (busy, finishing + 1)

    # The runner is free: the second job is claimed and generated while the first waits to be
    # stored. The stage is one job deep, so handing the second over waits for the first.
    thread, started = in_thread(lambda: executor.start(second))
    wait_until(lambda: generated(svc, second), "the second job to generate while the first is being stored")
    assert svc.get(first).status.value == "running"
    time.sleep(0.2)
    assert thread.is_alive(), "the stage took a second job while one was still being stored"
    assert svc.get(third).status.value == "queued"

    store.gate.set()
    thread.join(10)
    assert stored_first.result(10) == "succeeded"
    assert started[0].result(10) == "succeeded"
    assert executor.execute(third) == "succeeded"
    for job in (first, second, third):
        view = svc.get(job)
        assert view.status.value == "succeeded" and len(view.artifacts) == 1
        assert svc.artifact_bytes(view.artifacts[0].s3_key)
    assert executor.held() == []
    assert gauges() == (busy, finishing)
    executor.close()


@pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)
def test_without_a_finishing_stage_a_job_is_stored_before_the_next_starts(gated, monkeypatch):
    monkeypatch.setenv("DF_FINISHING_JOBS", "0")
    base, store = gated
    svc = JobService(Settings(), base.job_store, base.queue, store)
    executor = Executor(svc, FakeRunner(), "worker:test:1:serial")
    assert executor.finishing is None
    job = svc.submit(request("serial")).view.id
    thread, started = in_thread(lambda: executor.start(job))
    assert store.waiting.wait(10)
    time.sleep(0.2)
    assert thread.is_alive(), "start returned before the job's image was stored"
    store.gate.set()
    thread.join(10)
    assert started[0].done() and started[0].result() == "succeeded"


def test_a_job_canceled_while_its_images_are_stored_keeps_none(gated):
    svc, store = gated
    executor = Executor(svc, FakeRunner(), "worker:test:1:cancel")
    job = svc.submit(request("canceled while stored", count=2)).view.id
    stored = executor.start(job)
    assert store.waiting.wait(10)
    svc.cancel(job)
    store.gate.set()
    assert stored.result(10) == "canceled"
    view = svc.get(job)
    assert view.status.value == "canceled" and view.artifacts == []
    left = stored_objects(JobService.from_settings(Settings()))
    assert left == set(), "an image of a canceled job was left in the store"
    executor.close()


def test_a_stopping_worker_stores_what_its_stage_holds_first(gated):
    svc, store = gated
    runtime = WorkerRuntime(svc, FakeRunner())
    runtime.start()
    job = svc.submit(request("stored on the way out")).view.id
    stored = runtime.executor.start(job)
    assert store.waiting.wait(10)
    threading.Timer(0.3, store.gate.set).start()
    runtime.stop()
    assert stored.done() and stored.result() == "succeeded"
    assert svc.get(job).status.value == "succeeded"


def test_a_worker_killed_with_a_job_in_its_stage_loses_neither_job(df_env, start_worker, fault_report):
    """A SIGKILL while one job's images are being stored and the next is generating: both are
    reclaimed and made again, each ends with its own images, and no object is left without a row.
    A 2048x2048 pair at Pillow's zlib level 9 takes seconds to encode, which holds the first job in
    the stage while the second (slow steps) runs."""
    svc = JobService.from_settings(Settings())
    victim = start_worker(env={**FAST_RECLAIM, "DF_FAKE_STEP_DELAY_S": "0.1",
                                               "DF_PNG_ENCODER": "pillow", "DF_PNG_COMPRESS_LEVEL": "9"})
    big = svc.submit(request("big, slow to encode", steps=1, size=2048, count=2)).view.id
    slow = svc.submit(request("slow steps", steps=150)).view.id

    def both_held() -> bool:
        first, second = svc.get(big), svc.get(slow)
        return (first.status.value == second.status.value == "running"
                and generated(svc, big) and second.steps[0].progress.current > 0)

    wait_until(both_held, "the second job to run while the first one's images are stored", timeout=60)
    assert svc.get(big).artifacts == []
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()

    start_worker(env={**FAST_RECLAIM, "DF_FAKE_STEP_DELAY_S": "0", "DF_PNG_COMPRESS_LEVEL": "1"})
    counts = wait_terminal(svc, [big, slow], timeout=90)
    fault_report("worker SIGKILLed with a job in its finishing stage", counts)
    assert counts == {"succeeded": 2}
    for job, items in ((big, 2), (slow, 1)):
        view = svc.get(job)
        assert view.attempts == 2 and len(set(runs_of(svc, job))) == 2
        assert len(view.artifacts) == items
    time.sleep(2.5)  # the victim's upload records are older than the sweep's grace
    svc.sweep_uploads()
    keys = {a.s3_key for job in (big, slow) for a in svc.get(job).artifacts}
    assert stored_objects(svc) == keys, "an object without a row, or a row without its object"
    for key in keys:
        assert svc.artifact_bytes(key)
