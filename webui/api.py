"""Machine interfaces: the JSON API, Prometheus /metrics, and /healthz.

All but /healthz take ``Authorization: Bearer TOKEN`` (``spoold users
token NAME``); enqueueing needs an admin's token.  Errors are JSON
``{"error": "..."}`` with a 4xx/5xx status.

    GET  /api/v1/counters     what the dashboard shows (dashboard.counters)
    GET  /api/v1/queue        queue rows: state, domain, recipient, after, limit
                              (<= 1000); "next_after" continues the listing
    GET  /api/v1/deliveries   the log, newest first: recipient, queue_id, before, limit
    POST /api/v1/enqueue      {"from", "to": [..], "subject", "body", "priority"} or
                              {"from"?, "to"?, "message": RFC 5322 text}: spoold.enqueue
    POST /api/v1/mailouts     {"template", one of "list": NAME, "contacts": [..], "all": true,
                              "where": FILTER; optional "send_at", "expires_at" (TIME),
                              "rate" ("500/h"), "priority" (bulk|normal), "from",
                              "test_to": [..], "test_contact"}: like ``spoold mailout
                              create`` (spoold.mailout_request); 201 {"id", "send_at", ...}
    GET  /api/v1/mailouts/ID  the mailout and its counters, as ``spoold mailout show``
    GET  /metrics             Prometheus text format (token, or webui.metrics_public)
    GET  /healthz             200 {"status": "ok"} when the database answers, else 503

/metrics is built at each scrape by a collector reading the store: queue rows
by state, deferred rows, attempts by status and by DSN class ("5.1", "4.4",
"5.7" ...) since the log began (counters), today's top destination domains
with their attempts by status, and per runner: up, heartbeat age, every
numeric column of its heartbeat row as ``spoold_runner_<column>``
(children, busy_children, max_children, backlog, ...), and its claim,
dispatch and write latencies as histograms
(``spoold_runner_<kind>_latency_seconds``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, abort, current_app, g, jsonify, request
from flask.blueprints import BlueprintSetupState
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                   HistogramMetricFamily, Metric)

from spoold.enqueue import enqueue
from spoold.errors import NotFound, SpooldError, StoreError
from spoold.mailout_request import MailoutRequest, create_mailout
from spoold.log import get_logger
from spoold.store import STATES
from webui.auth import token_required
from webui.dashboard import counters, runner_status
from webui.pages import int_arg, text_arg
from webui.queue import current_filter
from webui.storage import settings, store

bp = Blueprint("api", __name__)

MAX_LIMIT = 1000
_LABELS = ("owner", "host")


@bp.route("/api/v1/counters")
@token_required()
def api_counters() -> Any:
    return jsonify(counters(store(), settings().webui.heartbeat_timeout))


def _limit() -> int:
    return min(int_arg("limit") or 100, MAX_LIMIT)


@bp.route("/api/v1/queue")
@token_required()
def api_queue() -> Any:
    limit = _limit()
    rows = store().queue_rows(**current_filter(), limit=limit, after=int_arg("after"))
    return jsonify(rows=rows, next_after=rows[-1]["id"] if len(rows) == limit else None)


@bp.route("/api/v1/deliveries")
@token_required()
def api_deliveries() -> Any:
    limit = _limit()
    rows = store().deliveries(recipient=text_arg("recipient"), queue_id=int_arg("queue_id"),
                              before=int_arg("before"), limit=limit)
    return jsonify(rows=rows, next_before=rows[-1]["id"] if len(rows) == limit else None)


def _json_object() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        abort(400, "send a JSON object (Content-Type: application/json)")
    return data


def _text(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise SpooldError(f"{key} must be a string")
    return value


def _recipients(data: dict[str, Any]) -> list[str] | None:
    value = data.get("to")
    if isinstance(value, str):
        return [value]
    if value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return value
    raise SpooldError("to must be an address or a list of addresses")


@bp.route("/api/v1/enqueue", methods=["POST"])
@token_required(role="admin")
def api_enqueue() -> Any:
    data = _json_object()
    try:
        message = _text(data, "message")
        result = enqueue(message.encode("utf-8") if message is not None else None,
                         sender=_text(data, "from"), recipients=_recipients(data),
                         subject=_text(data, "subject"), body=_text(data, "body"),
                         priority=_text(data, "priority") or "normal",
                         config=settings(), store=store())
    except StoreError:
        raise  # the database's fault, not the request's: the app's 503/500 handler
    except SpooldError as exc:
        return jsonify(error=str(exc)), 400
    get_logger().info("api_enqueue", user=g.api_user.name, rows=len(result.ids),
                      suppressed=len(result.suppressed))
    return jsonify(ids=result.ids, queued=result.queued, suppressed=result.suppressed), 201


# A mailout's recipients: exactly one of these keys.
_SELECTIONS = {"list": "list_name", "contacts": "contacts", "all": None, "where": "where"}


def _addresses(data: dict[str, Any], key: str) -> list[str]:
    value = data.get(key) or []
    if isinstance(value, str):
        value = value.split(",")
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise SpooldError(f"{key} must be an address or a list of addresses")
    return value


def _mailout_request(data: dict[str, Any]) -> MailoutRequest:
    given = [key for key in _SELECTIONS if data.get(key)]
    if len(given) != 1:
        raise SpooldError("choose the recipients with one of " + ", ".join(_SELECTIONS))
    kind = given[0]
    chosen = {}
    if kind == "contacts":
        chosen["contacts"] = _addresses(data, "contacts")
    elif kind != "all":
        chosen[_SELECTIONS[kind]] = _text(data, kind)
    return MailoutRequest(template=_text(data, "template") or "", selection=kind,
                          send_at=_text(data, "send_at"), expires_at=_text(data, "expires_at"),
                          rate=_text(data, "rate"), priority=_text(data, "priority") or "bulk",
                          sender=_text(data, "from"), test_to=_addresses(data, "test_to"),
                          test_contact=_text(data, "test_contact"), **chosen)


@bp.route("/api/v1/mailouts", methods=["POST"])
@token_required(role="admin")
def api_mailout_create() -> Any:
    data = _json_object()
    try:
        mailout_id, spec = create_mailout(settings(), store(), _mailout_request(data))
    except StoreError:
        raise
    except SpooldError as exc:
        return jsonify(error=str(exc)), 400
    get_logger().info("api_mailout", user=g.api_user.name, mailout=mailout_id)
    return jsonify(id=mailout_id, send_at=spec.send_at, expires_at=spec.expires_at,
                   selection=spec.selection, test_to=list(spec.test_to)), 201


@bp.route("/api/v1/mailouts/<int:mailout_id>")
@token_required()
def api_mailout(mailout_id: int) -> Any:
    try:
        return jsonify(store().mailout(mailout_id))
    except NotFound as exc:
        return jsonify(error=str(exc)), 404


class StoreCollector:
    """Reads the figures of /metrics from the store at each scrape."""

    def collect(self) -> Iterator[Metric]:
        db = store()
        states = db.state_counts()
        rows = GaugeMetricFamily("spoold_queue_rows", "Queue rows by state.", labels=["state"])
        for state in STATES:
            rows.add_metric([state], states[state])
        yield rows
        yield GaugeMetricFamily("spoold_queue_deferred_rows",
                                "Queued rows waiting for a retry.", value=states["deferred"])
        attempts = CounterMetricFamily("spoold_deliveries", "Delivery attempts logged, "
                                       "by status.", labels=["status"])
        for status, n in sorted(db.delivery_totals().items()):
            attempts.add_metric([status], n)
        yield attempts
        classes = CounterMetricFamily("spoold_deliveries_by_dsn", "Delivery attempts logged, "
                                      "by the class and subject of their DSN.",
                                      labels=["dsn_class"])
        for dsn_class, n in sorted(db.dsn_totals().items()):
            classes.add_metric([dsn_class], n)
        yield classes
        yield _top_domains(db.top_domains(time.time(), TOP_DOMAINS))
        yield from _runner_metrics(db.runner_rows(), settings().webui.heartbeat_timeout)


TOP_DOMAINS = 10


def _top_domains(domains: list[dict[str, Any]]) -> Metric:
    family = GaugeMetricFamily("spoold_domain_attempts_today",
                               f"Attempts today (UTC) to the {TOP_DOMAINS} busiest destination "
                               "domains, by status.", labels=["domain", "status"])
    for entry in domains:
        for status in ("sent", "deferred", "bounced", "expired"):
            family.add_metric([entry["domain"], status], entry[status])
    return family


def _runner_metrics(rows: list[dict[str, Any]], timeout: float) -> Iterator[Metric]:
    now = time.time()
    families: dict[str, GaugeMetricFamily] = {
        "up": GaugeMetricFamily("spoold_runner_up", "1 when the runner's heartbeat is fresh.",
                                labels=list(_LABELS)),
        "heartbeat_age": GaugeMetricFamily("spoold_runner_heartbeat_age_seconds",
                                           "Seconds since the runner's last heartbeat.",
                                           labels=list(_LABELS)),
    }
    latencies = {kind: HistogramMetricFamily(
        f"spoold_runner_{kind}_latency_seconds", text, labels=list(_LABELS))
        for kind, text in (("claim", "Seconds a claim of due rows took."),
                           ("dispatch", "Seconds from a row's claim to its job."),
                           ("write", "Seconds a batch of results took to commit."))}
    for row in rows:
        status = runner_status(row, now, timeout)
        labels = [str(row.get(label, "")) for label in _LABELS]
        families["up"].add_metric(labels, 1 if status["up"] else 0)
        families["heartbeat_age"].add_metric(labels, status["heartbeat_age"])
        _add_latencies(latencies, labels, row)
        for column, value in row.items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if column in _LABELS or not numeric:
                continue
            if column not in families:
                name = "spoold_runner_" + re.sub(r"[^a-zA-Z0-9_]", "_", column)
                families[column] = GaugeMetricFamily(
                    name, f"The runner's heartbeat row: {column}.", labels=list(_LABELS))
            families[column].add_metric(labels, value)
    yield from families.values()
    yield from latencies.values()


def _add_latencies(latencies: dict[str, HistogramMetricFamily], labels: list[str],
                   row: dict[str, Any]) -> None:
    """The heartbeat's latency_buckets (spoold/stats.py: bounds and cumulative counts
    per kind) with its counts and sums, as one histogram per kind."""
    buckets = json.loads(row.get("latency_buckets") or "{}")
    bounds = buckets.get("bounds", [])
    totals = {"claim": ("claims", "claim_seconds"), "dispatch": ("dispatched",
              "dispatch_seconds"), "write": ("writes", "write_seconds")}
    for kind, family in latencies.items():
        counts = buckets.get(kind)
        if not counts:
            continue
        count, total = (row.get(column) or 0 for column in totals[kind])
        family.add_metric(labels, [*((str(bound), n) for bound, n in zip(bounds, counts)),
                                   ("+Inf", count)], sum_value=total)


@bp.record_once
def _make_registry(state: BlueprintSetupState) -> None:
    # Its own registry: /metrics shows the store's figures, not this process's.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector())
    state.app.extensions["spoold_metrics"] = registry


def _metrics() -> Response:
    return Response(generate_latest(current_app.extensions["spoold_metrics"]),
                    content_type=CONTENT_TYPE_LATEST)


@bp.route("/metrics")
def metrics() -> Any:
    if settings().webui.metrics_public:
        return _metrics()
    return token_required()(_metrics)()


@bp.route("/healthz")
def healthz() -> Any:
    try:
        version = store().schema_version()
    except StoreError as exc:
        return jsonify(status="unavailable", error=str(exc)), 503
    return jsonify(status="ok", schema=version)
