"""The bundled Redis keeps queued jobs on disk: a restart (or a crash) does not lose them."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.celery import app
from jobs.broker import queued_jobs
from launcher.processes import free_port, start_embedded_redis, stop_process
from review.tasks import run_export_batch

pytestmark = pytest.mark.redis


def test_a_job_queued_before_a_restart_of_the_bundled_redis_is_still_queued_after_it(
        tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    redis = start_embedded_redis(port, tmp_path)
    try:
        with app.connection_for_write(url) as connection:
            run_export_batch.apply_async(args=[7], connection=connection, retry=False)
    finally:
        stop_process(redis)
    assert (tmp_path / "appendonly.aof").stat().st_size > 0

    redis = start_embedded_redis(port, tmp_path)
    try:
        with app.connection_for_read(url) as connection:
            held = queued_jobs(connection.default_channel, ["bulk"])
    finally:
        stop_process(redis)
    assert held.holds("review.tasks.run_export_batch", 7)
