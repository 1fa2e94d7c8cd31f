"""What each invocation leaves behind: one structured log line, and CloudWatch embedded
metrics through aws-lambda-powertools when enabled (imported only then, botocore kept
out)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any, Protocol

from ...core.status import Status

METRICS_ENV = "DISPATCHLET_METRICS"
METRICS_NAMESPACE = "dispatchlet"


class LoggerLike(Protocol):
    """What the adapter needs of a logger: ``logging.Logger`` and powertools' ``Logger``."""

    def info(self, msg: object, *args: object, extra: Mapping[str, object] | None = ...) -> None:
        """Log at INFO level with structured fields."""


class Metrics(Protocol):
    def __call__(self, status: str, milliseconds: float) -> None: ...


def metrics_enabled(metrics: bool | None) -> bool:
    if metrics is not None:
        return metrics
    return os.environ.get(METRICS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def powertools_metrics() -> Metrics:
    """Embedded metrics through aws-lambda-powertools, imported now and only for this."""
    blocked = _block_botocore()
    try:
        from aws_lambda_powertools.metrics import (  # type: ignore[import-not-found, unused-ignore]
            EphemeralMetrics,
            MetricUnit,
        )
    except ImportError as exc:
        raise RuntimeError(
            "metrics need aws-lambda-powertools: pip install 'dispatchlet[lambda]'"
        ) from exc
    finally:
        _unblock_botocore(blocked)
    namespace = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or METRICS_NAMESPACE
    service = os.environ.get("POWERTOOLS_SERVICE_NAME") or METRICS_NAMESPACE

    def record(status: str, milliseconds: float) -> None:
        # A fresh set per invocation: nothing shared with the application's own metrics.
        metrics = EphemeralMetrics(namespace=namespace, service=service)
        metrics.add_dimension(name="status", value=status)
        metrics.add_metric(name="Runs", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="Latency", unit=MetricUnit.Milliseconds, value=milliseconds)
        metrics.flush_metrics()

    return record


def _block_botocore() -> bool:
    """Keep powertools from importing botocore (present in every Lambda runtime).

    Its package init imports botocore, only to tag AWS SDK calls with its user agent;
    that import would add tens of milliseconds to the cold start of a function that may
    never call AWS.
    """
    if "botocore" in sys.modules or "aws_lambda_powertools" in sys.modules:
        return False
    sys.modules["botocore"] = None  # type: ignore[assignment]
    return True


def _unblock_botocore(blocked: bool) -> None:
    if blocked and sys.modules.get("botocore", False) is None:
        del sys.modules["botocore"]


class Telemetry:
    """One log line per invocation, and metrics when enabled."""

    def __init__(self, logger: LoggerLike, metrics: Metrics | None) -> None:
        self.logger = logger
        self.metrics = metrics
        self.cold_start = True

    def record(self, context: Any, source: str, status: int | Status, seconds: float) -> None:
        label = status.name if isinstance(status, Status) else str(status)
        milliseconds = round(seconds * 1000, 3)
        fields = {
            "event_source": source,
            "status": label,
            "duration_ms": milliseconds,
            "function_request_id": getattr(context, "aws_request_id", None),
            "function_name": getattr(context, "function_name", None),
            "cold_start": self.cold_start,
        }
        self.cold_start = False
        self.logger.info("dispatch %s: %s in %.1f ms", source, label, milliseconds, extra=fields)
        if self.metrics is not None:
            self.metrics(label, milliseconds)
