"""Export files on disk: a complete data file and its manifest, or nothing under their names."""

from __future__ import annotations

import errno
import hashlib
import json
import os

import pytest

from review import exports
from review.exports import build_export, run_export_batch, verify_export
from review.models import ExportBatch
from review.services import enqueue_for_review, review_item_claim, review_item_decide

pytestmark = pytest.mark.shared_data

QUESTIONS = ("Does aspirin prevent a second stroke?",
             "Is metformin safe in stage 3 kidney disease?")


@pytest.fixture(autouse=True)
def everything_in_train(settings, shared_data_dir):
    settings.LITERATURE_DATA_DIR = shared_data_dir
    settings.EXPORT_EVAL_PERCENT = 0


@pytest.fixture
def approved(answered, reviewer):
    def make(question):
        item = enqueue_for_review(consultation_id=answered(question, supported=(False,)).pk)
        review_item_claim(item_id=item.pk, reviewer=reviewer)
        review_item_decide(item_id=item.pk, reviewer=reviewer, kind="approve")
        return item
    return make


@pytest.fixture
def disk_fails_on_fsync(monkeypatch):
    """The Nth fsync of an export (1: the data file, 2: the manifest) fails as on a full disk."""
    real_fsync = os.fsync

    def arm(failing_call):
        calls = []

        def fsync(descriptor):
            calls.append(descriptor)
            if len(calls) == failing_call:
                raise OSError(errno.ENOSPC, "No space left on device")
            real_fsync(descriptor)

        monkeypatch.setattr(exports.os, "fsync", fsync)
    return arm


def test_a_finished_export_is_its_data_file_and_a_manifest_whose_checksum_matches(
        approved, tmp_path):
    for question in QUESTIONS:
        approved(question)
    result = build_export(fmt="sft", out_dir=tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sft.jsonl", "sft.manifest.json"]
    payload = (tmp_path / "sft.jsonl").read_bytes()
    manifest = json.loads((tmp_path / "sft.manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(payload).hexdigest() == result.sha256
    assert manifest["records"] == len(payload.splitlines()) == 2
    assert verify_export(tmp_path) == []


@pytest.mark.parametrize("failing_write", [1, 2], ids=["data file", "manifest"])
def test_a_failure_while_writing_leaves_neither_file(
        approved, tmp_path, disk_fails_on_fsync, failing_write):
    for question in QUESTIONS:
        approved(question)
    disk_fails_on_fsync(failing_write)
    with pytest.raises(OSError, match="No space left"):
        build_export(fmt="sft", out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # no final name, and no temporary left behind


def test_a_failed_rerun_keeps_the_previous_export_whole(approved, tmp_path, disk_fails_on_fsync):
    approved(QUESTIONS[0])
    build_export(fmt="sft", out_dir=tmp_path)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    approved(QUESTIONS[1])
    disk_fails_on_fsync(2)
    with pytest.raises(OSError):
        build_export(fmt="sft", out_dir=tmp_path)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before
    assert verify_export(tmp_path) == []


def test_an_export_batch_that_cannot_write_its_files_is_marked_failed(
        approved, tmp_path, disk_fails_on_fsync, admin_user):
    approved(QUESTIONS[0])
    batch = ExportBatch.objects.create(format="sft", out_dir=str(tmp_path / "batch"),
                                       created_by=admin_user)
    disk_fails_on_fsync(2)
    with pytest.raises(OSError):
        run_export_batch(batch.pk)
    batch.refresh_from_db()
    assert batch.status == ExportBatch.Status.FAILED
    assert batch.error_message == "The export failed (OSError); see the worker log."
    assert (batch.sha256, batch.file_name) == ("", "")
    assert list((tmp_path / "batch").iterdir()) == []
