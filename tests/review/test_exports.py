"""Training exports: formats, the split, reproducible bytes, verification, dedup, PHI."""

from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command

from review.exports import build_export, split_of, verify_export
from review.models import ExportBatch, ReviewItem
from review.services import (
    ClaimEdit,
    ReviewError,
    enqueue_for_review,
    review_item_claim,
    review_item_decide,
)

pytestmark = pytest.mark.shared_data


@pytest.fixture(autouse=True)
def everything_in_train(settings, shared_data_dir):
    settings.LITERATURE_DATA_DIR = shared_data_dir
    settings.EXPORT_EVAL_PERCENT = 0


@pytest.fixture
def reviewed(answered, reviewer):
    def make(question, kind="approve", **extra):
        item = enqueue_for_review(consultation_id=answered(question, supported=(False,),
                                                           **extra).pk)
        review_item_claim(item_id=item.pk, reviewer=reviewer)
        claims = [ClaimEdit("Aspirin lowers recurrent stroke by 22%.", [1])]
        review_item_decide(item_id=item.pk, reviewer=reviewer, kind=kind,
                           claims=claims if kind == "correct" else None,
                           error_categories=["wrong_fact"] if kind != "approve" else None)
        return item
    return make


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sft_lines_are_chat_messages_with_the_passages_and_the_reviewed_answer(
        reviewed, tmp_path):
    reviewed("Does aspirin prevent a second stroke?", "correct")
    reviewed("Is metformin safe in stage 3 kidney disease?")
    reviewed("Should beta-carotene be given for heart failure?", "reject")
    result = build_export(fmt="sft", out_dir=tmp_path)
    records = read_jsonl(result.path)
    assert len(records) == 2
    first = records[0]["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant"]
    assert "Does aspirin prevent a second stroke?" in first[1]["content"]
    assert 'pmid="90000001"' in first[1]["content"]
    assert first[2]["content"] == "Aspirin lowers recurrent stroke by 22% [1]."
    assert result.counts["not_applicable"] == 1


def test_dpo_pairs_only_corrected_answers_against_the_original(reviewed, tmp_path):
    corrected = reviewed("Does aspirin prevent a second stroke?", "correct")
    reviewed("Is metformin safe in stage 3 kidney disease?")
    [pair] = read_jsonl(build_export(fmt="dpo", out_dir=tmp_path).path)
    assert set(pair) == {"prompt", "chosen", "rejected"}
    assert [m["role"] for m in pair["prompt"]] == ["system", "user"]
    assert pair["chosen"] == [{"role": "assistant",
                               "content": "Aspirin lowers recurrent stroke by 22% [1]."}]
    assert pair["rejected"][0]["content"] == corrected.consultation.answer_text


def test_an_item_lands_in_train_or_eval_never_both(reviewed, tmp_path, settings):
    settings.EXPORT_EVAL_PERCENT = 50
    for number in range(12):
        reviewed(f"Distinct clinical question about drug {number} and outcome {number * 7}?")
    train = build_export(fmt="sft", out_dir=tmp_path / "train").manifest
    held_back = build_export(fmt="eval", out_dir=tmp_path / "eval").manifest
    train_items = {line["item"] for line in train["lines"]}
    eval_items = {line["item"] for line in held_back["lines"]}
    assert train_items and eval_items and not train_items & eval_items
    assert len(train_items | eval_items) == 12
    assert [split_of(n) for n in range(50)] == [split_of(n) for n in range(50)]
    eval_record = read_jsonl(tmp_path / "eval" / "eval.jsonl")[0]
    assert {"id", "question", "reference_answer", "passages", "outcome"} <= set(eval_record)


def test_the_same_export_twice_gives_the_same_bytes(reviewed, tmp_path):
    reviewed("Does aspirin prevent a second stroke?", "correct")
    reviewed("Is metformin safe in stage 3 kidney disease?")
    call_command("export_training", "--format", "sft", "--out", str(tmp_path / "a"))
    call_command("export_training", "--format", "sft", "--out", str(tmp_path / "b"))
    for name in ("sft.jsonl", "sft.manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert ExportBatch.objects.filter(status="done").count() == 2
    manifest = json.loads((tmp_path / "a" / "sft.manifest.json").read_text())
    assert manifest["records"] == 2
    assert manifest["model_versions"] == ["smollm2-135m"]
    assert manifest["reviewers"][0].startswith("rev-")
    assert "rev_carol" not in (tmp_path / "a" / "sft.manifest.json").read_text()


def test_verify_export_names_the_edited_line(reviewed, tmp_path):
    for question in ("Does aspirin prevent a second stroke?",
                     "Is metformin safe in stage 3 kidney disease?"):
        reviewed(question)
    build_export(fmt="sft", out_dir=tmp_path)
    assert verify_export(tmp_path) == []
    lines = (tmp_path / "sft.jsonl").read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace("metformin", "metformin 3 g")
    (tmp_path / "sft.jsonl").write_text("".join(lines))
    problems = verify_export(tmp_path)
    assert any("line 2" in problem for problem in problems)
    assert not any("line 1 " in problem for problem in problems)
    with pytest.raises(CommandError):
        call_command("verify_export", str(tmp_path))


def test_duplicates_and_benchmark_questions_are_excluded_and_counted(
        reviewed, tmp_path, shared_data_dir):
    pubmedqa = json.loads((shared_data_dir / "pubmedqa" / "pqal_dev.json").read_text())
    benchmark_question = next(iter(pubmedqa.values()))["QUESTION"]
    exam = json.loads((shared_data_dir / "exam" / "mirage_medmcqa_mmlu.json").read_text())
    exam_question = next(iter(exam["medmcqa"].values()))["question"]
    reviewed("Does low-dose aspirin prevent recurrent ischemic stroke in older adults?")
    reviewed("does low dose aspirin prevent recurrent ischemic stroke in older adults")
    reviewed("Does low-dose aspirin prevent recurrent ischaemic stroke in older adults?")
    reviewed(benchmark_question)
    reviewed(exam_question.upper())
    result = build_export(fmt="sft", out_dir=tmp_path)
    assert result.counts["duplicate_exact"] == 1
    assert result.counts["duplicate_near"] == 1
    assert result.counts["contaminated"] == 2
    assert result.counts["exported"] == 1


def test_identifiers_are_redacted_and_unsure_items_held_for_a_human(reviewed, tmp_path):
    reviewed("Patient Maria Lopez (MRN 00482913), born 03/14/1962: is apixaban safe?",
             patient_note="Call her at 617-555-0199.")
    held = reviewed("Is the water in 02139 safe for dialysis patients?")
    result = build_export(fmt="sft", out_dir=tmp_path)
    [record] = read_jsonl(result.path)
    user = record["messages"][1]["content"]
    for secret in ("Maria", "Lopez", "00482913", "03/14/1962", "617-555-0199"):
        assert secret not in user
    assert "[NAME]" in user and "[MRN]" in user and "[PHONE]" in user
    assert result.counts["phi_held"] == 1
    assert result.manifest["phi"]["held_for_human"] == 1
    held.refresh_from_db()
    assert held.phi_status == ReviewItem.PhiStatus.HELD


def test_an_admin_releases_a_held_item_with_the_text_they_checked(
        reviewed, tmp_path, admin_user, client):
    from review.models import PhiClearance
    from review.services import phi_clearance_record

    held = reviewed("Is the water in 02139 safe for dialysis patients?")
    build_export(fmt="sft", out_dir=tmp_path / "first")
    held.refresh_from_db()
    assert held.phi_status == ReviewItem.PhiStatus.HELD
    assert held.phi_findings == ["question: a bare five-digit number (a ZIP code?)"]

    client.force_login(admin_user)
    page = client.get("/review/phi-holds/").content.decode()
    assert "a bare five-digit number" in page and "Is the water in 02139 safe" in page
    response = client.post(f"/review/phi-holds/{held.pk}/clear", {
        "decision": "release", "note": "A ZIP code: redacted by hand.",
        "question": "Is the water in [ZIP] safe for dialysis patients? Call 617-555-0199.",
        "final_answer": "Aspirin lowers recurrent stroke by 22% [1].",
        "model_answer": "Aspirin helps [1]."})
    assert response.status_code == 302
    clearance = PhiClearance.objects.get()
    assert (clearance.decision, clearance.decided_by, clearance.note) == (
        "release", admin_user, "A ZIP code: redacted by hand.")
    held.refresh_from_db()
    assert held.phi_status == ReviewItem.PhiStatus.RELEASED
    with pytest.raises(TypeError):
        clearance.save()

    result = build_export(fmt="sft", out_dir=tmp_path / "second")
    [record] = read_jsonl(result.path)
    user = record["messages"][1]["content"]
    # The admin's text is exported; a phone number typed in while editing is still removed.
    assert "Is the water in [ZIP] safe for dialysis patients? Call [PHONE]." in user
    assert "02139" not in user and "617-555-0199" not in user
    assert result.manifest["phi"]["released_by_admin"] == 1
    assert result.counts.get("phi_held", 0) == 0
    # Nothing left to check.
    assert "No item is held" in client.get("/review/phi-holds/").content.decode()
    with pytest.raises(ReviewError):
        phi_clearance_record(item_id=held.pk, admin=admin_user, decision="exclude")


def test_a_release_no_longer_applies_once_the_texts_change(reviewed, tmp_path, admin_user,
                                                           reviewer):
    from review.services import phi_clearance_record

    held = reviewed("Is the water in 02139 safe for dialysis patients?")
    build_export(fmt="sft", out_dir=tmp_path / "first")
    phi_clearance_record(item_id=held.pk, admin=admin_user, decision="exclude",
                         note="Cannot tell.")
    result = build_export(fmt="sft", out_dir=tmp_path / "second")
    assert result.counts["phi_excluded_by_admin"] == 1 and result.counts["exported"] == 0
    # The answer is corrected later: the admin never saw these texts, so the item is held again.
    ReviewItem.objects.filter(pk=held.pk).update(final_answer_text="Boil it first [1].")
    result = build_export(fmt="sft", out_dir=tmp_path / "third")
    assert result.counts["phi_held"] == 1
    held.refresh_from_db()
    assert held.phi_status == ReviewItem.PhiStatus.HELD


def test_only_admins_clear_holds_and_a_release_cannot_empty_a_text(
        reviewed, tmp_path, admin_user, reviewer, client):
    from review.models import PhiClearance
    from review.services import phi_clearance_record

    held = reviewed("Is the water in 02139 safe for dialysis patients?")
    build_export(fmt="sft", out_dir=tmp_path)
    client.force_login(reviewer)
    assert client.get("/review/phi-holds/").status_code == 403
    assert client.post(f"/review/phi-holds/{held.pk}/clear",
                       {"decision": "release"}).status_code == 403
    with pytest.raises(ReviewError, match="Only admins"):
        phi_clearance_record(item_id=held.pk, admin=reviewer, decision="release")
    client.force_login(admin_user)
    response = client.post(f"/review/phi-holds/{held.pk}/clear",
                           {"decision": "release", "question": "  "}, follow=True)
    assert "cannot be emptied" in response.content.decode()
    assert not PhiClearance.objects.exists()
    held.refresh_from_db()
    assert held.phi_status == ReviewItem.PhiStatus.HELD


def test_a_withheld_draft_is_never_a_training_target_and_withheld_items_are_marked(
        answered, reviewer, tmp_path):
    def withheld(question, kind):
        consultation = answered(question, supported=(False,), abstained=True)
        item = enqueue_for_review(consultation_id=consultation.pk)
        review_item_claim(item_id=item.pk, reviewer=reviewer)
        review_item_decide(item_id=item.pk, reviewer=reviewer, kind=kind,
                           claims=[ClaimEdit("Aspirin lowers recurrent stroke by 22%.", [1])]
                           if kind == "correct" else None)
        return item

    withheld("Does aspirin prevent a second stroke?", "approve")
    corrected = withheld("Is metformin safe in stage 3 kidney disease?", "correct")

    sft = build_export(fmt="sft", out_dir=tmp_path / "sft")
    [record] = read_jsonl(sft.path)
    assert record["messages"][-1]["content"] == corrected.__class__.objects.get(
        pk=corrected.pk).final_answer_text
    assert "Aspirin lowers recurrent stroke [1]. Metformin" not in sft.path.read_text()
    assert sft.counts["withheld_draft"] == 1
    assert [line["withheld"] for line in sft.manifest["lines"]] == [True]

    dpo = build_export(fmt="dpo", out_dir=tmp_path / "dpo")
    [pair] = read_jsonl(dpo.path)
    assert pair["rejected"][0]["content"].startswith("Aspirin lowers recurrent stroke [1].")
    assert dpo.manifest["lines"][0]["withheld"] is True
