"""Metrics as Prometheus sees them: scraped over HTTP from a real `df worker --metrics-port`, from
the API's /metrics with its embedded worker, and added up across processes in multi-process mode.
The dashboard and the alert rules in docs/ may use only names these scrapes expose."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from dreamforge.schemas import parse_request
from dreamforge.server.app import create_app
from dreamforge.server.metrics import make_registry, metrics_text
from dreamforge.service import JobService
from dreamforge.settings import Settings
from tests.conftest import ROOT
from tests.polling import wait_status, wait_until

SQLITE_ONLY = pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",),
            "info": ("_info",), "summary": ("_count", "_sum", "")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def exposed_names(*texts: str) -> set[str]:
    """The names a query may use: each family's samples by its type (a histogram declared but
    not observed yet still offers _bucket, _count and _sum)."""
    names: set[str] = set()
    for text in texts:
        for family in text_string_to_metric_families(text):
            names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
            names.update(s.name for s in family.samples)
    return names


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def submit(svc: JobService, **fields: Any) -> str:
    body = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 3, "seed": 1, **fields}
    return svc.submit(parse_request(body)).view.id


def scrape_worker(port: int) -> str:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    response.raise_for_status()
    return response.text


@SQLITE_ONLY
def test_worker_serves_its_metrics_after_a_success_a_failure_and_a_cancel(df_env, start_worker):
    """One worker, three jobs: the crash of its first job (one attempt allowed) counts as failed
    runner_crashed, the next succeeds with every phase timed, the third is canceled mid-run; the
    slots are idle again after."""
    port = free_port()
    start_worker("--metrics-port", str(port),
                 env={"DF_FAKE_FAILURE": "crash-once", "DF_MAX_ATTEMPTS": "1",
                      "DF_FAKE_STEP_DELAY_S": "0.02"})
    svc = JobService.from_settings(Settings())
    crashed = submit(svc)
    wait_status(svc, crashed, "failed")
    ok = submit(svc, format="webp")
    wait_status(svc, ok, "succeeded")
    long = submit(svc, steps=150)
    wait_status(svc, long, "running")
    svc.cancel(long)
    got = wait_until(lambda: (s := samples(scrape_worker(port)))
                     and value(s, "dreamforge_jobs_finished_total", status="canceled", code="none") and s,
                     "the worker to count the cancel")

    assert value(got, "dreamforge_jobs_finished_total", status="failed", code="runner_crashed") == 1
    assert value(got, "dreamforge_jobs_finished_total", status="succeeded", code="none") == 1
    assert value(got, "dreamforge_job_queued_seconds_count") == 3
    assert value(got, "dreamforge_job_running_seconds_count", outcome="failed") == 1
    assert value(got, "dreamforge_job_running_seconds_count", outcome="succeeded") == 1
    assert value(got, "dreamforge_job_running_seconds_count", outcome="canceled") == 1
    assert value(got, "dreamforge_step_seconds_count") == 1
    # Three fake steps of 0.02 s: the mean step lands in the (0.02, 0.05] bucket or above.
    assert value(got, "dreamforge_step_seconds_bucket", le="0.01") == 0
    assert value(got, "dreamforge_step_seconds_sum") >= 0.02
    assert value(got, "dreamforge_encode_seconds_count", format="webp") == 1
    assert value(got, "dreamforge_upload_seconds_count") == 1
    assert value(got, "dreamforge_worker_busy_slots") == 0
    assert value(got, "dreamforge_worker_idle_slots") == 1
    info = [k for k in got if k[0] == "dreamforge_worker_info"]
    assert len(info) == 1 and dict(info[0][1])["runner"] == "fake"
    svc.close()


@SQLITE_ONLY
def test_worker_refuses_a_metrics_port_in_use(df_env, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "dreamforge.cli.main", "worker",
                                 "--metrics-port", str(port)], env={**os.environ, **df_env},
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"can't serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


@SQLITE_ONLY
def test_embedded_worker_metrics_show_on_the_api(df_env):
    """df serve's embedded worker records into the API process: /metrics has its observations
    beside the store's counts (canceled included)."""
    settings = Settings()
    with TestClient(create_app(settings, embedded_worker=True)) as api:
        before = samples(api.get("/metrics").text)
        response = api.post("/v1/jobs", json={"prompt": "a lighthouse", "width": 64, "height": 64,
                                              "steps": 2, "seed": 3})
        job_id = response.json()["id"]
        wait_until(lambda: api.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded",
                   "the embedded worker to finish the job")
        after = samples(api.get("/metrics").text)
    finished = ("dreamforge_jobs_finished_total", {"status": "succeeded", "code": "none"})
    assert value(after, finished[0], **finished[1]) - value(before, finished[0], **finished[1]) == 1
    assert value(after, "dreamforge_step_seconds_count") > value(before, "dreamforge_step_seconds_count")
    assert value(after, "dreamforge_jobs", status="succeeded") == 1
    assert ("dreamforge_jobs", (("status", "canceled"),)) in after
    assert value(after, "dreamforge_backends_up") == 1
    assert value(after, "dreamforge_workers_live") == 1
    assert value(after, "dreamforge_worker_idle_slots") == 1


def promql_names(expressions: Iterable[str]) -> set[str]:
    return {name for expr in expressions for name in re.findall(r"\bdreamforge_[a-z0-9_]+", expr)}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    exprs += [v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "")
              for v in dashboard.get("templating", {}).get("list", [])]
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((ROOT / "docs" / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


@SQLITE_ONLY
def test_dashboard_and_alerts_use_only_exposed_names(df_env, start_worker):
    """Every metric name in docs/grafana-dashboard.json and docs/alerts.yml is exposed by a worker
    or the API, and the dashboard graphs every DreamForge family they expose."""
    port = free_port()
    start_worker("--metrics-port", str(port))
    worker_text = scrape_worker(port)
    with TestClient(create_app(Settings())) as api:
        api_text = api.get("/metrics").text
    exposed = exposed_names(worker_text, api_text)

    dashboard = dashboard_expressions()
    assert dashboard and all(dashboard)
    used = promql_names(dashboard)
    assert used - exposed == set(), f"dashboard names nobody exposes: {sorted(used - exposed)}"
    families = {f.name for t in (worker_text, api_text) for f in text_string_to_metric_families(t)
                if f.name.startswith("dreamforge_")}
    unused = {f for f in families if not any(n == f or n.startswith(f + "_") for n in used)}
    assert unused == set(), f"families the dashboard does not show: {sorted(unused)}"

    rules = alert_rules()
    assert {"DreamForgeJobsStuckQueued", "DreamForgeFailureRateHigh",
            "DreamForgeNoLiveWorker"} <= {r["alert"] for r in rules}
    alerting = promql_names(r["expr"] for r in rules)
    assert alerting and alerting - exposed == set(), sorted(alerting - exposed)
    assert all(r.get("labels", {}).get("severity") and r.get("annotations", {}).get("summary")
               for r in rules)


WRITER = textwrap.dedent("""
    from dreamforge import metrics
    with metrics.attempt(2.0) as attempt:
        attempt.ended("failed")
    metrics.finished("failed", "runner_crashed")
    metrics.succeeded({"generate_s": 1.0, "encode_s": 0.1, "store_s": 0.05}, 10, "png")
""")


@SQLITE_ONLY
def test_multiprocess_mode_adds_up_every_process(df_env, tmp_path, monkeypatch):
    """Two processes write into one PROMETHEUS_MULTIPROC_DIR; the API's /metrics reports their sum,
    and the store's gauges once (they are computed at scrape time, not per process)."""
    folder = tmp_path / "prom"
    folder.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder), "PYTHONPATH": str(ROOT)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", WRITER], env=env, check=True, timeout=60)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    svc = JobService.from_settings(Settings())
    submit(svc)
    got = samples(metrics_text(make_registry(svc)).decode())
    svc.close()
    assert value(got, "dreamforge_jobs_finished_total", status="failed", code="runner_crashed") == 2
    assert value(got, "dreamforge_jobs_finished_total", status="succeeded", code="none") == 2
    assert value(got, "dreamforge_job_queued_seconds_count") == 2
    assert value(got, "dreamforge_job_running_seconds_count", outcome="failed") == 2
    assert value(got, "dreamforge_step_seconds_sum") == pytest.approx(0.2)
    assert value(got, "dreamforge_jobs", status="queued") == 1
    # Only the files' values: this test process's own (non-multiprocess) values are not mixed in.
    assert not any(name.startswith("process_") for name, _ in got)


def test_gpu_memory_is_reported_only_when_a_runner_sends_it():
    from dreamforge import metrics

    metrics.gpu_memory(None)
    text = metrics_text(metrics.registry()).decode()
    assert "dreamforge_gpu_memory_peak_bytes{" not in text
    metrics.gpu_memory({"device": "cuda:7", "allocated": 1024, "peak": 4096})
    got = samples(metrics_text(metrics.registry()).decode())
    assert value(got, "dreamforge_gpu_memory_peak_bytes", device="cuda:7") == 4096
    assert value(got, "dreamforge_gpu_memory_allocated_bytes", device="cuda:7") == 1024
    metrics.GPU_PEAK.remove("cuda:7")
    metrics.GPU_ALLOCATED.remove("cuda:7")


def test_docs_name_every_metric():
    from dreamforge import metrics

    doc = (ROOT / "docs" / "metrics.md").read_text()
    declared = {m._name for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}
    assert len(declared) >= 14
    assert {n for n in declared if f"`{n}" not in doc} == set()
