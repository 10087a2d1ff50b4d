"""What the broker holds: every job message waiting in a queue or delivered and not yet acked.

The reconciler compares it with the job rows: a row that says pending while no message for it is
anywhere in Redis (a Redis restart without persistence, a message dropped) has lost its job.
Read straight from kombu's Redis layout: one list per queue (and per priority step), and the
`unacked` hash of messages delivered to a worker but not yet acknowledged (with `acks_late`,
every running job's message stays there until the job ends).

A message still unacknowledged well after its task's hard time limit belonged to a worker that
died; `restore_orphans` puts it back on its queue then, instead of hours later when Redis's
visibility timeout (above the longest limit of all tasks) would.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueuedJobs:
    """(task name, first argument) of each message in the broker, waiting or delivered."""

    messages: frozenset[tuple[str, Any]] = frozenset()

    def holds(self, task_name: str, object_id: Any) -> bool:
        return (task_name, object_id) in self.messages


@dataclass(frozen=True)
class Delivery:
    """A message delivered to a worker and not yet acknowledged."""

    tag: str
    job: tuple[str, Any]
    # When the worker could start it (epoch seconds): delivery, or its ETA when later.
    since: float


def _decode(raw: bytes | str) -> dict[str, Any] | None:
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    if isinstance(message, list):  # the unacked hash stores [message, exchange, routing key]
        message = message[0]
    return message if isinstance(message, dict) else None


def _job_of(message: dict[str, Any] | None) -> tuple[str, Any] | None:
    """(task name, first argument) of one kombu message (Celery protocol 2, JSON body)."""
    if message is None:
        logger.warning("skipping a broker message that is not JSON")
        return None
    try:
        task_name = message["headers"]["task"]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
    except (ValueError, KeyError, IndexError, TypeError) as error:
        logger.warning("skipping a broker message that is not a Celery job: %r", error)
        return None
    return (task_name, args[0] if args else None)


def _eta_of(message: dict[str, Any]) -> float | None:
    eta = message.get("headers", {}).get("eta")
    try:
        return datetime.fromisoformat(eta).timestamp() if eta else None
    except (TypeError, ValueError):
        return None


def waiting_jobs(channel: Any, queue_names: Iterable[str]) -> set[tuple[str, Any]]:
    """Jobs whose message waits in one of `queue_names` (read through a kombu Redis channel,
    whose client applies any key prefix)."""
    client = channel.client
    jobs: set[tuple[str, Any]] = set()
    for name in queue_names:
        for step in channel.priority_steps:
            for raw in client.lrange(channel._q_for_pri(name, step), 0, -1):
                job = _job_of(_decode(raw))
                if job is not None:
                    jobs.add(job)
    return jobs


def deliveries(channel: Any) -> list[Delivery]:
    """Messages delivered to workers and not acknowledged yet (kombu's unacked hash and the
    index of when each was delivered)."""
    client = channel.client
    delivered_at = dict(client.zrange(channel.unacked_index_key, 0, -1, withscores=True))
    found: list[Delivery] = []
    for raw_tag, raw in client.hgetall(channel.unacked_key).items():
        message = _decode(raw)
        job = _job_of(message)
        if job is None or message is None:
            continue
        since = max(float(delivered_at.get(raw_tag, 0.0)), _eta_of(message) or 0.0)
        tag = raw_tag.decode() if isinstance(raw_tag, bytes) else str(raw_tag)
        found.append(Delivery(tag, job, since))
    return found


def queued_jobs(channel: Any, queue_names: Iterable[str]) -> QueuedJobs:
    """Every job with a message in `queue_names` or delivered to a worker."""
    delivered = {delivery.job for delivery in deliveries(channel)}
    return QueuedJobs(frozenset(waiting_jobs(channel, queue_names) | delivered))


def restore_orphans(channel: Any, time_limits: Mapping[str, float], *, margin: float,
                    now: float | None = None) -> list[Delivery]:
    """Put back on their queue the deliveries whose worker must be gone; returns them.

    A live worker acknowledges (or rejects) a message at the latest when its task reaches
    its hard time limit, so one still unacknowledged `margin` seconds after that was held by
    a worker that died (SIGKILL, a lost host). Redis itself would hand it out again only after
    the visibility timeout, set above the longest limit of all tasks (hours); this does it as
    soon as the message's own task limit allows, the way kombu does (one transaction per
    message, so two reconcilers never both restore it).
    """
    now = time.time() if now is None else now
    restored: list[Delivery] = []
    for delivery in deliveries(channel):
        limit = time_limits.get(delivery.job[0])
        if limit is None or delivery.since + limit + margin >= now:
            continue
        channel.qos.restore_by_tag(delivery.tag, channel.client)
        logger.warning("restored %s for %s to its queue: delivered %.0f s ago, longer than its "
                       "time limit, so its worker is gone", delivery.job[0], delivery.job[1],
                       now - delivery.since)
        restored.append(delivery)
    return restored
