"""
C{GET /metrics}: the service's Prometheus metrics (L{slaveapi.metrics}) in
the text exposition format, for a Prometheus server to scrape.

Like every other read it needs a token only under C{[auth] protect_reads};
a service built without metrics (some tests) answers 503.
"""

from __future__ import annotations

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from twisted.web.iweb import IRequest

from slaveapi.metrics import ServiceMetrics
from slaveapi.web.errors import HTTPProblem


def scrape(metrics: ServiceMetrics | None, request: IRequest) -> bytes:
    """Every metric of C{metrics} as it is now, with the exposition format's content type."""
    if metrics is None:
        raise HTTPProblem(503, "unavailable", "metrics: this service does not collect metrics")
    body = metrics.exposition()
    # The format generate_latest writes (CONTENT_TYPE_LATEST names a newer version of it).
    request.setHeader(b"Content-Type", CONTENT_TYPE_PLAIN_0_0_4.encode("ascii"))
    return body
