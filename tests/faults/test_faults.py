"""The fault suite: real processes killed or restarted in the middle of real jobs
(tests/faults/cases.py says how). Each case: nothing lost, nothing done twice, and a status
the user can read. bench/faults.py repeats each case N times and prints the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.cases import (
    Lab,
    case_model_server_killed_mid_stream,
    case_postgres_restarted_mid_request,
    case_redis_restarted,
    case_same_ingest_file_twice,
    case_two_web_workers_20_quick_answers,
    case_updates_out_of_order,
    case_worker_killed_deep_consult,
    case_worker_killed_evaluation,
    case_worker_killed_export,
    case_worker_killed_ingest,
    case_worker_killed_training,
    postgres_binaries,
)

pytestmark = [pytest.mark.redis]


@pytest.mark.model_server
def test_a_worker_killed_during_a_deep_consult(lab: Lab, model_server: dict[str, str],
                                               tiny_index: Path) -> None:
    outcome = case_worker_killed_deep_consult(lab)
    assert (outcome.lost, outcome.duplicated) == (0, 0), outcome.notes
    assert "complete" in outcome.status, (outcome.status, outcome.notes)


def test_a_worker_killed_during_an_export(lab: Lab) -> None:
    outcome = case_worker_killed_export(lab)
    assert (outcome.lost, outcome.duplicated) == (0, 0), outcome.notes
    assert "done" in outcome.status, (outcome.status, outcome.notes)


@pytest.mark.model_server
def test_a_worker_killed_during_an_evaluation(lab: Lab, model_server: dict[str, str],
                                              tiny_index: Path) -> None:
    outcome = case_worker_killed_evaluation(lab)
    assert (outcome.lost, outcome.duplicated) == (0, 0), outcome.notes
    assert "complete" in outcome.status, (outcome.status, outcome.notes)


def test_a_worker_killed_during_an_ingest(lab: Lab, fault_index_dir: Path) -> None:
    outcome = case_worker_killed_ingest(lab)
    assert (outcome.lost, outcome.duplicated) == (0, 0), outcome.notes
    assert "file done" in outcome.status, (outcome.status, outcome.notes)


def test_a_worker_killed_during_a_training_run(lab: Lab) -> None:
    outcome = case_worker_killed_training(lab)
    assert (outcome.lost, outcome.duplicated) == (0, 0), outcome.notes
    assert "complete" in outcome.status, (outcome.status, outcome.notes)


def test_redis_restarted_with_jobs_queued_and_running(lab: Lab) -> None:
    outcome = case_redis_restarted(lab)
    assert (outcome.lost, outcome.duplicated) == (0, 0), outcome.notes
    assert "done, done, done, done" in outcome.status, (outcome.status, outcome.notes)


@pytest.mark.model_server
def test_the_model_server_killed_mid_stream(lab: Lab, model_server: dict[str, str],
                                            tiny_index: Path) -> None:
    outcome = case_model_server_killed_mid_stream(lab)
    assert (outcome.lost, outcome.duplicated) == (0, 0), outcome.notes
    assert "Failed" in outcome.status, (outcome.status, outcome.notes)


@pytest.mark.model_server
@pytest.mark.skipif(postgres_binaries() is None,
                    reason="PostgreSQL's server programs (initdb, pg_ctl) are not installed; "
                    "install postgresql to restart a private cluster mid-request")
def test_postgresql_restarted_mid_request(lab: Lab, model_server: dict[str, str]) -> None:
    outcome = case_postgres_restarted_mid_request(lab)
    assert (outcome.lost, outcome.duplicated) == (0, 0), outcome.notes
    assert "13/13 answered" in outcome.status, (outcome.status, outcome.notes)


@pytest.mark.model_server
def test_two_web_workers_twenty_quick_answers(lab: Lab, model_server: dict[str, str],
                                              tiny_index: Path) -> None:
    outcome = case_two_web_workers_20_quick_answers(lab)
    assert (outcome.lost, outcome.duplicated) == (0, 0), outcome.notes
    assert "20/20" in outcome.status, (outcome.status, outcome.notes)


def test_the_same_ingest_file_queued_twice(lab: Lab, fault_index_dir: Path) -> None:
    outcome = case_same_ingest_file_twice(lab)
    assert (outcome.lost, outcome.duplicated) == (0, 0), outcome.notes
    assert "file done" in outcome.status, (outcome.status, outcome.notes)


def test_update_files_delivered_out_of_order(lab: Lab, fault_index_dir: Path) -> None:
    outcome = case_updates_out_of_order(lab)
    assert (outcome.lost, outcome.duplicated) == (0, 0), outcome.notes
    assert "deletion stayed deleted" in outcome.status, (outcome.status, outcome.notes)

