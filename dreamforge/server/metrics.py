"""Prometheus text for /metrics: what the job store and the queue say at scrape time, plus the
metrics this process records itself (``dreamforge.metrics``: an embedded worker's, or, with
PROMETHEUS_MULTIPROC_DIR set, every API process's added up).

The store-derived gauges stay a collector run at scrape time, never per-process values: every API
process would report the same numbers, and a sum over processes would multiply them."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dreamforge import metrics as process_metrics
from dreamforge.errors import DreamForgeError
from dreamforge.service import JobService


class JobCollector(Collector):
    def __init__(self, service: JobService):
        self.service = service

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("dreamforge_backends_up", "1 when the job store and queue answered")
        try:
            status = self.service.status()
            counts, depth, workers = status["jobs"], status["queue_depth"], len(status["workers"])
        except DreamForgeError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("dreamforge_jobs", "Jobs by status", labels=["status"])
        for status, n in counts.items():
            jobs.add_metric([status], n)
        yield jobs
        yield GaugeMetricFamily("dreamforge_queue_depth", "Messages waiting in the queue", value=depth)
        yield GaugeMetricFamily("dreamforge_workers_live", "Workers with a recent heartbeat",
                                value=workers)


def metrics_text(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


class ProcessCollector(Collector):
    """This process's own metrics (or all processes' in multi-process mode), read at scrape time."""

    def collect(self) -> Iterator[Metric]:
        yield from process_metrics.registry().collect()


def make_registry(service: JobService) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobCollector(service))
    registry.register(ProcessCollector())
    return registry
