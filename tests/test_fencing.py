"""A worker that lost its job can't touch it; one clock for every deadline; no stalled worker holds
recovery hostage; no object outlives its record; a full disk is a clear storage_error.

Faults are caused for real where they can be (libfaketime clocks, SIGSTOP/SIGCONT, a row lock held
open, a tmpfs that is full); a worker dying at each step of storing an image is the real Executor
whose artifact store stops the run there, the way a SIGKILL would."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from dreamforge.artifact_store import ArtifactStore, LocalStore
from dreamforge.execution import Executor
from dreamforge.moves import RUNNING
from dreamforge.runners.fake import FakeRunner
from dreamforge.schemas import parse_request
from dreamforge.service import JobService
from dreamforge.settings import Settings
from tests.conftest import IN_CI, open_the_store_at_once, run_df
from tests.polling import runs_of, wait_status, wait_terminal, wait_until

FAST = {"DF_HEARTBEAT_INTERVAL_S": "0.2", "DF_WORKER_TIMEOUT_S": "1.5", "DF_ORPHAN_SWEEP_INTERVAL_S": "0.5"}


def request(prompt: str = "f", steps: int = 2, seed: int | None = 1, size: int = 64):
    return parse_request({"prompt": prompt, "width": size, "height": size, "steps": steps, "seed": seed})


def service() -> JobService:
    return JobService.from_settings(Settings())


def stored_objects(svc: JobService) -> set[str]:
    """Every object in the artifact store, temporary files of killed writers included."""
    store = svc.artifact_store
    assert isinstance(store, LocalStore)
    return {str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file()}


def faketime_env(offset: str) -> dict[str, str]:
    import libfaketime

    lib = Path(libfaketime.__file__).parent / "vendor" / "libfaketime" / "src" / "libfaketime.so.1"
    if not lib.exists():
        pytest.fail(f"libfaketime's library is missing at {lib}")
    # The wall clock moves; the monotonic clock (timeouts, intervals) stays the host's.
    return {"LD_PRELOAD": str(lib), "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


# -- one clock ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("df_env", ["postgres_redis"], indirect=True)
def test_skewed_clocks_neither_steal_nor_lose_jobs(df_env, start_worker, fault_report):
    """Workers a minute ahead of and behind PostgreSQL's clock work side by side: no job fails
    worker_lost, none runs twice, and a real crash of a skewed worker is noticed within the worker
    timeout. (SQLite: one host, one clock; nothing to skew.)"""
    env = {**FAST, "DF_FAKE_STEP_DELAY_S": "0.05"}
    ahead = start_worker(env={**env, **faketime_env("+60s")})
    behind = start_worker(env={**env, **faketime_env("-60s")})
    level = start_worker(env=env)
    svc = service()
    check = subprocess.run([sys.executable, "-c", "import time; print(time.time())"],
                           env={**os.environ, **faketime_env("+60s")}, capture_output=True, text=True)
    assert float(check.stdout) - time.time() > 55  # the fake clock really is ahead
    ids = [svc.submit(request(f"skew {i}", steps=4)).view.id for i in range(30)]
    counts = wait_terminal(svc, ids, timeout=120)
    fault_report("workers' clocks 60 s ahead and behind, 30 jobs", counts)
    assert counts == {"succeeded": 30}
    assert all(len(runs_of(svc, i)) == 1 for i in ids), "a job ran more than once"
    assert len({runs_of(svc, i)[0] for i in ids}) == 3, "a skewed worker sat idle or took all"

    # A real crash of the worker ahead is noticed within the timeout, not a minute late.
    for worker in (behind, level):
        assert worker.stop() == 0
    job = svc.submit(request("crash of the worker ahead", steps=150)).view.id
    wait_status(svc, job, "running")
    ahead.proc.kill()
    ahead.proc.wait()
    killed_at = time.monotonic()
    start_worker(env=env)
    wait_until(lambda: len(runs_of(svc, job)) == 2, "the killed worker's job to run again", timeout=30)
    noticed = time.monotonic() - killed_at
    assert noticed < 1.5 + 3, f"a crash was noticed after {noticed:.1f} s (timeout 1.5 s)"
    counts = wait_terminal(svc, [job], timeout=60)
    fault_report("the worker 60 s ahead SIGKILLed mid-job", counts)
    assert counts == {"succeeded": 1}


# -- no stalled worker holds recovery hostage ------------------------------------------------------

@pytest.mark.parametrize("df_env", ["postgres_redis"], indirect=True)
def test_a_row_lock_held_by_a_frozen_session_stalls_nobody(df_env, start_worker, fault_report):
    """A session frozen inside a transaction (a GC pause, SIGSTOP, a partition) holds the row lock
    of a job whose worker died. Meanwhile every worker stays live, new jobs run, and the reaper
    skips that row instead of waiting on it; once the lock goes, the job is recovered."""
    svc = service()
    orphan = svc.submit(request("held by a dead worker")).view.id
    svc.queue.flush()  # its message went with the worker that died holding it
    claim = svc.claim(orphan, "worker:gone:1:dead")
    assert claim is not None and claim.fence.attempt == 1
    engine = sa.create_engine(df_env["DF_DATABASE_URL"])
    frozen = engine.connect()
    tx = frozen.begin()
    frozen.execute(sa.text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": orphan})
    # The workers start after the claim and the lock: one already waiting could take the message
    # before the flush, and one started before the lock could reclaim the job before it is held.
    workers = [start_worker(env=FAST) for _ in range(2)]
    try:
        fresh = [svc.submit(request(f"while frozen {i}")).view.id for i in range(5)]
        deadline = time.monotonic() + 5 * 1.5  # five worker timeouts
        while time.monotonic() < deadline:
            live = {w["id"] for w in svc.live_workers()}
            assert len(live) == 2, f"a worker looked dead while a row lock was held: {live}"
            time.sleep(0.2)
        assert wait_terminal(svc, fresh, timeout=30) == {"succeeded": 5}
        assert svc.get(orphan).status.value == "running"  # skipped, not waited on
    finally:
        tx.rollback()
        frozen.close()
        engine.dispose()
    counts = wait_terminal(svc, [orphan], timeout=30)
    fault_report("a session frozen holding a job's row lock", counts + Counter(succeeded=5))
    assert counts == {"succeeded": 1}
    assert runs_of(svc, orphan)[-1] != "worker:gone:1:dead"
    assert all(w.proc.poll() is None for w in workers)


def test_heartbeat_at_or_above_the_timeout_is_refused(df_env):
    result = run_df({**df_env, "DF_HEARTBEAT_INTERVAL_S": "15", "DF_WORKER_TIMEOUT_S": "15"}, "worker",
                    timeout=30)
    assert result.returncode == 2
    assert "DF_HEARTBEAT_INTERVAL_S (15) must be at most half of DF_WORKER_TIMEOUT_S (15)" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("df_env", ["postgres_redis"], indirect=True)
def test_many_processes_create_the_schema_at_once(df_env):
    """Ten processes start on an empty database at the same moment (compose up on a fresh volume):
    the schema is made once, under PostgreSQL's advisory lock, and every one of them starts."""
    open_the_store_at_once(df_env)


# -- fenced writes: a worker that lost its job touches nothing --------------------------------------

def test_a_stopped_worker_resumed_after_its_job_finished_elsewhere_writes_nothing(df_env, start_worker,
                                                                                 fault_report):
    env = {**FAST, "DF_FAKE_STEP_DELAY_S": "0.1"}
    frozen = start_worker(env=env)
    svc = service()
    job = svc.submit(request("frozen mid-step", steps=20, seed=None)).view.id
    wait_until(lambda: svc.get(job).steps[0].progress.current >= 2, "the job to make progress")
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        rescuer = start_worker(env={**env, "DF_FAKE_STEP_DELAY_S": "0"})
        counts = wait_terminal(svc, [job], timeout=30)
        history = svc.events(job)
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: "lost the job to another worker" in frozen.log(), "the resumed worker to give up")
    time.sleep(1)  # anything it would still write, it has written by now
    fault_report("worker SIGSTOPped, resumed after another finished its job", counts)
    assert counts == {"succeeded": 1}
    assert svc.events(job) == history, "the resumed worker wrote to a job it no longer held"
    assert history[-1]["payload"]["status"] == "succeeded"
    view = svc.get(job)
    assert view.steps[0].seed == view.params["seed"] == view.artifacts[0].seed
    assert stored_objects(svc) == {a.s3_key for a in view.artifacts}
    assert frozen.proc.poll() is None and rescuer.proc.poll() is None


class Killed(BaseException):
    """The process died here: nothing after this line of the run happens (no except clause of
    the Executor catches it), exactly as with a SIGKILL at that point."""


class DiesWhileStoring:
    """The real store, but the worker dies at one step of storing an image."""

    def __init__(self, real: ArtifactStore, when: str):
        self.real, self.when = real, when

    def put(self, key: str, data: bytes, content_type: str, sha256: str) -> None:
        if self.when == "before the write":
            raise Killed
        if self.when == "midway through the write":
            assert isinstance(self.real, LocalStore)
            path = self.real.path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.parent / f".partial-{path.name}-killed").write_bytes(data[: len(data) // 2])
            raise Killed
        self.real.put(key, data, content_type, sha256)
        if self.when == "after the write, before the record":
            raise Killed

    def __getattr__(self, name: str):
        return getattr(self.real, name)


@pytest.mark.parametrize("when", ["before the write", "midway through the write",
                                  "after the write, before the record"])  # fmt: skip
def test_a_worker_killed_at_each_step_of_storing_leaves_no_stray_object(df_env, monkeypatch, when,
                                                                        fault_report):
    for name, value in FAST.items():
        monkeypatch.setenv(name, value)
    svc = service()
    job = svc.submit(request(f"killed {when}", seed=None)).view.id
    dying = JobService(svc.settings, svc.job_store, svc.queue, DiesWhileStoring(svc.artifact_store, when))
    with pytest.raises(Killed):
        Executor(dying, FakeRunner(), "worker:victim:1:x").execute(job)
    assert svc.get(job).status is RUNNING
    if when != "before the write":
        assert stored_objects(svc), "the dying worker left something behind to clean up"

    time.sleep(1.6)  # the victim is silent for longer than DF_WORKER_TIMEOUT_S
    assert svc.reclaim_silent() == [(job, "queued")]
    assert Executor(svc, FakeRunner(), "worker:rescuer:1:y").execute(job) == "succeeded"
    time.sleep(1.6)  # the victim's upload record is older than the sweep's grace
    svc.sweep_uploads()
    view = svc.get(job)
    counts = Counter([view.status.value])
    fault_report(f"worker killed storing an image: {when.split(',')[0]}", counts)
    assert counts == {"succeeded": 1} and len(view.artifacts) == 1
    assert stored_objects(svc) == {view.artifacts[0].s3_key}, "an object without a row, or a row without one"
    assert svc.artifact_bytes(view.artifacts[0].s3_key)


# -- a full disk ----------------------------------------------------------------------------------------

@pytest.fixture
def full_disk(tmp_path: Path):
    """A 4 MiB tmpfs, filled up but for a few KiB."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        message = f"can't mount a tmpfs here: {done.stderr.strip()}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    filler = mount / "filler"
    with open(filler, "wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 65536)
    filler.write_bytes(b"\0" * (filler.stat().st_size - 16 * 1024))  # leave 16 KiB
    try:
        yield mount, filler
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)
def test_a_full_disk_is_a_clear_storage_error_and_leaves_nothing_partial(df_env, full_disk, tmp_path,
                                                                         monkeypatch, fault_report):
    mount, filler = full_disk
    env = {**df_env, "DF_DATA_DIR": str(mount), "DF_DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}",
           "DF_QUEUE_URL": f"sqlite:///{tmp_path / 'queue.db'}"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # 512x512 of the fake runner's shapes is far more than the 16 KiB left.
    result = run_df(env, "generate", "no room", "--width", "512", "--height", "512", "--steps", "3",
                    "--seed", "5", "--wait")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    svc = service()
    [view] = svc.list_jobs()
    fault_report("artifact folder and spool on a full disk", Counter([view.status.value]))
    assert view.status.value == "failed" and view.error.code == "storage_error"
    assert "out of disk space" in view.error.message and str(mount) not in view.error.message
    assert view.params["seed"] == 5 and view.artifacts == []
    leftovers = [p for p in mount.rglob("*") if p.is_file() and p != filler]
    assert leftovers == [], f"partial files stayed behind: {leftovers}"

    filler.unlink()  # room again: the job runs again to the same image, its seed being recorded
    outs = []
    for name in ("again.png", "once-more.png"):
        rerun = run_df(env, "generate", "no room", "--width", "512", "--height", "512", "--steps", "3",
                       "--seed", str(view.params["seed"]), "-o", str(tmp_path / name))
        assert rerun.returncode == 0, rerun.stderr
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1]
