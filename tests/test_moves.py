"""The one place that decides: every legal move, the retry rule, and the runs a job gets when its
runner fails on demand (the fake runner's crash-once, crash and hang, through a real `df worker`)."""

from __future__ import annotations

import pytest

from dreamforge import moves
from dreamforge.moves import FAILED, QUEUED, RUNNING, SUCCEEDED, Fence, JobFailure, Move
from dreamforge.schemas import JobStatus, parse_request
from dreamforge.service import JobService
from dreamforge.settings import Settings
from tests.polling import wait_terminal

FENCE = Fence("j", "worker:a", 1)


def test_only_the_moves_in_the_table_exist():
    legal = set(moves.LEGAL)
    for source in JobStatus:
        for target in JobStatus:
            if (source, target) in legal:
                continue
            with pytest.raises(ValueError, match="no such move"):
                Move("j", source, target, fence=FENCE, claimant="w", failure=JobFailure("x", "y"))
    assert (SUCCEEDED, FAILED) not in legal and (FAILED, QUEUED) not in legal


def test_a_move_out_of_running_names_its_holder():
    with pytest.raises(ValueError, match="fence"):
        Move("j", RUNNING, SUCCEEDED)
    with pytest.raises(ValueError, match="code and message"):
        Move("j", RUNNING, FAILED, fence=FENCE)


@pytest.mark.parametrize("code, attempt, target", [
    ("runner_crashed", 1, QUEUED), ("runner_timeout", 2, QUEUED), ("worker_lost", 2, QUEUED),
    ("runner_crashed", 3, FAILED), ("worker_lost", 3, FAILED),
    ("model_not_found", 1, FAILED), ("storage_error", 1, FAILED), ("internal_error", 1, FAILED),
])
def test_the_retry_rule(code, attempt, target):
    move = moves.after_failure(Fence("j", "w", attempt), JobFailure(code, "m"), max_attempts=3)
    assert move.target is target
    assert (move.failure is None) == (target is QUEUED)


@pytest.mark.parametrize("failure, env, status, code, attempts", [
    ("crash-once", {}, "succeeded", None, 2),
    ("crash", {"DF_MAX_ATTEMPTS": "2"}, "failed", "runner_crashed", 2),
    ("hang", {"DF_MAX_ATTEMPTS": "2", "DF_STEP_TIMEOUT_S": "0.3"}, "failed", "runner_timeout", 2),
])
def test_a_failing_runner_gets_its_attempts_through_a_real_worker(df_env, start_worker, failure, env, status,
                                                                  code, attempts):
    start_worker(env={"DF_FAKE_FAILURE": failure, **env})
    svc = JobService.from_settings(Settings())
    job = svc.submit(parse_request({"prompt": failure, "width": 64, "height": 64, "steps": 2})).view.id
    assert wait_terminal(svc, [job], timeout=30) == {status: 1}
    view = svc.get(job)
    assert view.attempts == attempts
    assert (view.error.code if view.error else None) == code
    requeues = [e["payload"].get("reason") for e in svc.events(job) if e["payload"].get("status") == "queued"][1:]
    assert requeues == [code or "runner_crashed"] * (attempts - 1)
