"""Prometheus metrics of one server, and the periodic throughput line that reads them back."""
from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

logger = logging.getLogger("swiftcli")

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)


class ServerMetrics:
    """A registry per server (not prometheus_client's global one), so apps built in one process stay apart."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("swift_requests", "Finished requests by endpoint and HTTP status ('aborted': the "
                                "client went away).", ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("swift_prompt_tokens", "Prompt tokens processed.", registry=r)
        self.generation_tokens = Counter("swift_generation_tokens", "Tokens generated.", registry=r)
        self.ttft = Histogram("swift_time_to_first_token_seconds", "From arrival to the first generated token.",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("swift_e2e_request_latency_seconds", "From arrival to the last byte.",
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.running = Gauge("swift_num_requests_running", "Requests generating now.", registry=r)
        self.waiting = Gauge("swift_num_requests_waiting", "Requests queued behind --max_concurrency.", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def totals(self) -> tuple[float, float, float]:
        """(prompt tokens, generated tokens, finished requests) so far."""
        get = self.registry.get_sample_value
        finished = sum(s.value for m in self.requests.collect() for s in m.samples if s.name.endswith("_total"))
        return get("swift_prompt_tokens_total") or 0.0, get("swift_generation_tokens_total") or 0.0, finished


async def log_throughput(metrics: ServerMetrics, interval: float) -> None:
    """Every `interval` seconds with traffic, one line: token rates, finished requests, running and waiting."""
    last, last_time = metrics.totals(), time.perf_counter()
    while True:
        await asyncio.sleep(interval)
        now, now_time = metrics.totals(), time.perf_counter()
        running = metrics.registry.get_sample_value("swift_num_requests_running")
        if now != last or running:
            elapsed = now_time - last_time
            waiting = metrics.registry.get_sample_value("swift_num_requests_waiting")
            logger.info("throughput: prompt %.1f tok/s, generation %.1f tok/s, %d requests finished, %d running, "
                        "%d waiting", (now[0] - last[0]) / elapsed, (now[1] - last[1]) / elapsed, now[2] - last[2],
                        running, waiting)
        last, last_time = now, now_time
