"""Writes for the review queue: who may work an item, and what they decided about it.

Every decision is a ReviewDecision row (write-once) stored in the same transaction that moves
the item on, so the item's state can always be explained from its decisions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from clinic.models import Consultation
from clinic.roles import is_admin, is_reviewer
from jobs.queueing import enqueue_after_commit
from review import tasks
from review.exports import TEXT_FIELDS, scrub_item, source_sha256
from review.models import (
    REASON_PRIORITY,
    ErrorCategory,
    ExportBatch,
    PhiClearance,
    ReviewDecision,
    ReviewItem,
    ReviewReason,
)
from review.selectors import current_round_visible, review_queue

logger = logging.getLogger(__name__)


class ReviewError(Exception):
    """A review action that cannot be done; the message says why and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ReviewConflict(ReviewError):
    """Someone else holds the item, or it moved on since the page was drawn."""


class ReviewRefused(ReviewError):
    """This person may not review this item (it answers their own question)."""


OWN_CONSULTATION = ("You asked this question, so someone else reviews its answer; "
                    "pick another item.")


def _check_not_own(item: ReviewItem, reviewer: User) -> None:
    if item.consultation.user_id == reviewer.pk:
        raise ReviewRefused(OWN_CONSULTATION)


# Crude on purpose: a first guess a reviewer corrects, keyed on words in the question.
SPECIALTY_KEYWORDS: dict[str, tuple[str, ...]] = {
    "cardiology": ("heart", "cardiac", "atrial", "myocardial", "hypertension", "statin",
                   "coronary", "arrhythmia", "blood pressure"),
    "neurology": ("stroke", "seizure", "epilep", "migraine", "parkinson", "dementia",
                  "alzheimer", "multiple sclerosis", "neuropath"),
    "oncology": ("cancer", "tumor", "tumour", "carcinoma", "lymphoma", "leukemia", "chemotherapy",
                 "metasta", "oncolog"),
    "endocrinology": ("diabet", "insulin", "thyroid", "metformin", "glucose", "hba1c",
                      "vitamin d"),
    "infectious disease": ("infection", "antibiotic", "sepsis", "hiv", "hepatitis", "covid",
                           "influenza", "tuberculosis", "vaccin"),
    "nephrology": ("kidney", "renal", "dialysis", "egfr", "ckd"),
    "pulmonology": ("asthma", "copd", "pulmonary", "lung", "pneumonia", "respiratory"),
    "gastroenterology": ("liver", "crohn", "colitis", "bowel", "gastric", "pancrea", "hepat"),
    "orthopaedics": ("fracture", "bone", "osteopor", "hip ", "knee", "spine"),
    "psychiatry": ("depress", "anxiety", "schizophren", "bipolar", "psychiatr", "suicid"),
    "obstetrics": ("pregnan", "obstetric", "preeclampsia", "postpartum", "gestation"),
    "paediatrics": ("child", "infant", "neonat", "pediatric", "paediatric", "adolescen"),
}


def guess_specialty(question: str) -> str:
    lowered = question.lower()
    best, best_hits = "", 0
    for specialty, words in SPECIALTY_KEYWORDS.items():
        hits = sum(1 for word in words if word in lowered)
        if hits > best_hits:
            best, best_hits = specialty, hits
    return best


def in_quality_sample(consultation_id: int, rate: float) -> bool:
    """A stable pseudo-random draw: the same consultation is always in or always out."""
    digest = hashlib.sha256(f"review-sample:{consultation_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def review_reasons(consultation: Consultation) -> list[str]:
    reasons: list[str] = []
    feedback = list(consultation.feedback.all())
    if any(ReviewReason.UNSAFE.value in (entry.problems or []) for entry in feedback):
        reasons.append(ReviewReason.UNSAFE)
    if any(not entry.helpful for entry in feedback):
        reasons.append(ReviewReason.THUMBS_DOWN)
    if consultation.claims.filter(supported=False).exists():
        reasons.append(ReviewReason.UNSUPPORTED)
    if consultation.abstained:
        reasons.append(ReviewReason.ABSTAINED)
    confidence = consultation.routing_confidence
    if consultation.routing_fallback or (confidence is not None
                                         and confidence < settings.REVIEW_CONFIDENCE_THRESHOLD):
        reasons.append(ReviewReason.LOW_CONFIDENCE)
    if not reasons and in_quality_sample(consultation.pk, settings.REVIEW_SAMPLE_RATE):
        reasons.append(ReviewReason.SAMPLE)
    return [str(reason) for reason in reasons]


def _required_reviews(reasons: list[str]) -> int:
    if ReviewReason.UNSAFE in reasons:
        return max(settings.REVIEW_REQUIRED_REVIEWS, settings.REVIEW_UNSAFE_REQUIRED_REVIEWS)
    return settings.REVIEW_REQUIRED_REVIEWS


def enqueue_for_review(*, consultation_id: int) -> ReviewItem | None:
    """Queue (or re-prioritise) a finished answer; harmless to call again and again.

    Call it when an answer is finalised and whenever feedback is stored. A new, more urgent
    reason on an item already reviewed (an `unsafe` flag after approval) reopens it.
    """
    with transaction.atomic():
        consultation = (Consultation.objects.select_for_update(of=("self",))
                        .select_related("routed_model").filter(pk=consultation_id).first())
        if consultation is None or consultation.status != Consultation.Status.COMPLETE:
            return None
        reasons = review_reasons(consultation)
        item = ReviewItem.objects.select_for_update().filter(consultation=consultation).first()
        if not reasons:
            return item
        if item is None:
            model_name = (consultation.routed_model.name if consultation.routed_model
                          else consultation.routed_model_name)
            if os.path.isabs(model_name):
                # The bundled server is addressed by its folder; reviewers need the model's name.
                model_name = os.path.basename(model_name.rstrip("/"))
            item = ReviewItem.objects.create(
                consultation=consultation, reason_codes="|" + "|".join(reasons) + "|",
                priority=min(REASON_PRIORITY[ReviewReason(r)] for r in reasons),
                required_reviews=_required_reviews(reasons), model_name=model_name[:200],
                specialty=guess_specialty(consultation.question))
            logger.info("consultation %s queued for review (%s)", consultation.pk,
                        ", ".join(reasons))
            return item
        merged = list(dict.fromkeys(item.reasons + reasons))
        if ReviewReason.SAMPLE in merged and len(merged) > 1:
            merged.remove(ReviewReason.SAMPLE)
        new_reasons = set(merged) - set(item.reasons)
        priority = min(REASON_PRIORITY[ReviewReason(r)] for r in merged)
        fields = ["reason_codes", "priority", "required_reviews", "updated_at"]
        item.reason_codes = "|" + "|".join(merged) + "|"
        item.required_reviews = max(item.required_reviews, _required_reviews(merged))
        if (item.status == ReviewItem.Status.DONE and new_reasons
                and priority < item.priority):
            item.status = ReviewItem.Status.PENDING
            item.round += 1
            item.outcome = ""
            item.resolved_at = None
            fields += ["status", "round", "outcome", "resolved_at"]
            logger.info("review item %s reopened (%s)", item.pk, ", ".join(sorted(new_reasons)))
        item.priority = min(priority, item.priority)
        item.save(update_fields=fields)
        return item


def _claimable(reviewer: User) -> Q:
    if is_admin(reviewer):
        return Q(status__in=[ReviewItem.Status.PENDING, ReviewItem.Status.NEEDS_ADJUDICATION,
                             ReviewItem.Status.ESCALATED])
    return Q(status=ReviewItem.Status.PENDING)


def _free_or_mine(reviewer: User, now: Any) -> Q:
    return (Q(claimed_by__isnull=True) | Q(claim_expires_at__lt=now)
            | Q(claimed_by=reviewer))


def _check_reviewer(reviewer: User) -> None:
    if not is_reviewer(reviewer):
        raise ReviewError("Only reviewers and admins can review answers.")


def review_item_claim(*, item_id: int, reviewer: User) -> ReviewItem:
    """Hold an item for this reviewer for REVIEW_CLAIM_MINUTES; one holder at a time."""
    _check_reviewer(reviewer)
    now = timezone.now()
    item = ReviewItem.objects.select_related("consultation").filter(pk=item_id).first()
    if item is None:
        raise ReviewError("This review item does not exist.")
    _check_not_own(item, reviewer)
    if item.status in (ReviewItem.Status.PENDING,) and item.decisions.filter(
            reviewer=reviewer, round=item.round, is_adjudication=False).exists():
        raise ReviewConflict("You have already reviewed this item; it needs an independent "
                             "review by someone else.")
    updated = (ReviewItem.objects.filter(pk=item_id).filter(_claimable(reviewer))
               .filter(_free_or_mine(reviewer, now))
               .update(claimed_by=reviewer, claim_expires_at=now + timedelta(
                   minutes=settings.REVIEW_CLAIM_MINUTES), updated_at=now))
    item.refresh_from_db()
    if updated != 1:
        if item.status == ReviewItem.Status.DONE:
            raise ReviewConflict("This item has already been reviewed.")
        if item.status != ReviewItem.Status.PENDING and not is_admin(reviewer):
            raise ReviewConflict("This item waits for an admin.")
        raise ReviewConflict("Another reviewer is working on this item; pick another one. "
                             f"Their claim expires at {item.claim_expires_at:%H:%M} UTC.")
    return item


def review_item_release(*, item_id: int, reviewer: User) -> None:
    ReviewItem.objects.filter(pk=item_id, claimed_by=reviewer).update(
        claimed_by=None, claim_expires_at=None, updated_at=timezone.now())


def review_claim_next(*, reviewer: User, queryset: Any = None) -> ReviewItem | None:
    """Claim the most urgent item this reviewer may work, trying the next on a lost race."""
    base = queryset if queryset is not None else review_queue(reviewer=reviewer)
    for item_id in base.values_list("pk", flat=True)[:20]:
        try:
            return review_item_claim(item_id=item_id, reviewer=reviewer)
        except (ReviewConflict, ReviewRefused):
            continue
    return None


@dataclass(frozen=True)
class ClaimEdit:
    text: str
    citations: list[int]


def answer_snapshot(consultation: Consultation) -> dict[str, Any]:
    return {
        "answer_text": consultation.answer_text,
        "claims": [{"position": claim.position, "text": claim.text,
                    "citations": list(claim.citations or [])}
                   for claim in consultation.claims.all()],
    }


def compose_answer(claims: list[ClaimEdit]) -> str:
    parts = []
    for claim in claims:
        text = claim.text.strip()
        cites = "".join(f"[{number}]" for number in claim.citations)
        if cites:
            match = re.match(r"^(.*?)([.!?]*)$", text, re.DOTALL)
            body, stop = (match.group(1), match.group(2)) if match else (text, "")
            text = f"{body} {cites}{stop}"
        parts.append(text)
    return " ".join(parts)


def _corrected(consultation: Consultation, claims: list[ClaimEdit]) -> dict[str, Any]:
    ranks = set(consultation.passages.values_list("rank", flat=True))
    kept = [claim for claim in claims if claim.text.strip()]
    if not kept:
        raise ReviewError("A correction needs at least one claim; to discard the answer, "
                          "reject it instead.")
    for claim in kept:
        unknown = sorted(set(claim.citations) - ranks)
        if unknown:
            raise ReviewError(f"Citation(s) {', '.join(map(str, unknown))} do not match any "
                              "passage shown with this answer.")
    return {"answer_text": compose_answer(kept),
            "claims": [{"position": index, "text": claim.text.strip(),
                        "citations": list(dict.fromkeys(claim.citations))}
                       for index, claim in enumerate(kept)]}


def review_item_decide(*, item_id: int, reviewer: User, kind: str,
                       claims: list[ClaimEdit] | None = None,
                       error_categories: list[str] | None = None, note: str = "",
                       specialty: str = "") -> ReviewDecision:
    """Record one decision on an item the reviewer holds, and move the item on.

    An admin deciding an escalated or disputed item adjudicates: that decision is final.
    """
    _check_reviewer(reviewer)
    if kind not in ReviewDecision.Kind.values:
        raise ReviewError(f"Unknown decision {kind!r}.")
    categories = sorted(set(error_categories or []))
    unknown = [c for c in categories if c not in ErrorCategory.values]
    if unknown:
        raise ReviewError(f"Unknown error categories: {', '.join(unknown)}.")
    if kind == ReviewDecision.Kind.REJECT and not categories:
        raise ReviewError("Say why the answer is rejected: choose at least one error category.")
    now = timezone.now()
    with transaction.atomic():
        item = (ReviewItem.objects.select_for_update(of=("self",)).select_related("consultation")
                .filter(pk=item_id).first())
        if item is None:
            raise ReviewError("This review item does not exist.")
        _check_not_own(item, reviewer)
        if item.claimed_by_id != reviewer.pk or not item.claim_expires_at \
                or item.claim_expires_at < now:
            raise ReviewConflict("Your claim on this item has expired or was never taken; "
                                 "claim it again and re-check the answer before deciding.")
        adjudicating = item.status in (ReviewItem.Status.NEEDS_ADJUDICATION,
                                       ReviewItem.Status.ESCALATED)
        if adjudicating and not is_admin(reviewer):
            raise ReviewConflict("This item waits for an admin.")
        if item.status == ReviewItem.Status.DONE:
            raise ReviewConflict("This item has already been reviewed.")
        if adjudicating and kind == ReviewDecision.Kind.ESCALATE:
            raise ReviewError("An adjudicator decides: approve, correct or reject.")
        consultation = item.consultation
        before = answer_snapshot(consultation)
        if kind == ReviewDecision.Kind.CORRECT:
            after = _corrected(consultation, claims or [])
        else:
            after = before
        # The same rule that hides the round's decisions on the page says whether this one
        # was made without seeing them.
        blind = not current_round_visible(item, reviewer)
        try:
            decision = ReviewDecision.objects.create(
                item=item, reviewer=reviewer, kind=kind, round=item.round,
                is_adjudication=adjudicating, blind=blind, error_categories=categories,
                note=note.strip(), specialty=specialty, before=before, after=after)
        except IntegrityError:
            raise ReviewConflict("You have already reviewed this item.") from None
        item.claimed_by = None
        item.claim_expires_at = None
        fields = ["claimed_by", "claim_expires_at", "status", "updated_at"]
        if adjudicating:
            _resolve(item, decision, fields)
        elif kind == ReviewDecision.Kind.ESCALATE:
            item.status = ReviewItem.Status.ESCALATED
        else:
            votes = list(item.decisions.filter(round=item.round, is_adjudication=False)
                         .order_by("created_at", "id"))
            if len(votes) < item.required_reviews:
                item.status = ReviewItem.Status.PENDING
            elif len({vote.kind for vote in votes}) == 1:
                _resolve(item, decision, fields)
            else:
                item.status = ReviewItem.Status.NEEDS_ADJUDICATION
        # A specialty correction is part of the decision: applied to the item (its queue
        # label, the next form's default) only once the blind round is over.
        corrected = specialty or next(
            (vote.specialty for vote in item.decisions.filter(round=item.round)
             .order_by("-created_at", "-id") if vote.specialty), "")
        if item.status != ReviewItem.Status.PENDING and corrected \
                and corrected != item.specialty:
            item.specialty = corrected
            fields.append("specialty")
        item.save(update_fields=fields)
    logger.info("review item %s: %s by user %s (%s)", item.pk, kind, reviewer.pk, item.status)
    return decision


def _resolve(item: ReviewItem, decision: ReviewDecision, fields: list[str]) -> None:
    item.status = ReviewItem.Status.DONE
    item.outcome = decision.kind
    item.final_answer_text = decision.after.get("answer_text", "")
    item.final_claims = decision.after.get("claims", [])
    categories: set[str] = set()
    for vote in item.decisions.filter(round=item.round):
        categories.update(vote.error_categories or [])
    item.error_categories = sorted(categories)
    item.resolved_at = timezone.now()
    fields += ["outcome", "final_answer_text", "final_claims", "error_categories",
               "resolved_at"]


def holds_claim(item: ReviewItem, reviewer: User) -> bool:
    return bool(item.claimed_by_id == reviewer.pk and item.claim_expires_at
                and item.claim_expires_at >= timezone.now())


# --- PHI holds -----------------------------------------------------------------------------

def phi_clearance_record(*, item_id: int, admin: User, decision: str,
                         texts: dict[str, str] | None = None, note: str = "") -> Any:
    """An admin's decision on an item the PHI gate held. "release" exports the texts the admin
    approved (as shown, de-identified, edited further where needed); "exclude" keeps the item
    out of every export. Stored before the item's status says so."""
    if not is_admin(admin):
        raise ReviewError("Only admins can release an item held by the PHI gate.")
    if decision not in PhiClearance.Decision.values:
        raise ReviewError("Choose release or exclude.")
    with transaction.atomic():
        item = (ReviewItem.objects.select_for_update(of=("self",))
                .select_related("consultation").filter(pk=item_id).first())
        if item is None:
            raise ReviewError("No such review item.")
        if item.phi_status != ReviewItem.PhiStatus.HELD:
            raise ReviewConflict("This item is not held by the PHI gate (any more); "
                                 "reload the list.")
        scrubbed = scrub_item(item)
        approved: dict[str, str] = {}
        if decision == PhiClearance.Decision.RELEASE:
            texts = texts or {}
            for name in TEXT_FIELDS:
                original = getattr(scrubbed, name)
                value = texts.get(name, original)
                if original.strip() and not value.strip():
                    raise ReviewError(f"The {name.replace('_', ' ')} cannot be emptied; "
                                      "replace identifiers with [NAME], [LOCATION]… instead.")
                approved[name] = value.replace("\r\n", "\n")
        clearance = PhiClearance.objects.create(
            item=item, decided_by=admin, decision=decision, source_sha256=source_sha256(item),
            unsure=scrubbed.unsure, texts=approved, note=note.strip())
        item.phi_status = (ReviewItem.PhiStatus.RELEASED
                           if decision == PhiClearance.Decision.RELEASE
                           else ReviewItem.PhiStatus.EXCLUDED)
        item.save(update_fields=["phi_status", "updated_at"])
    logger.info("PHI hold on review item %s: %s by user %s", item_id, decision, admin.pk)
    return clearance


# --- Training exports ----------------------------------------------------------------------

def export_batch_create(*, fmt: str, since: Any, min_reviews: int,
                        created_by: User) -> ExportBatch:
    """Store the export request, then queue it; a broker outage leaves it failed, kept."""
    with transaction.atomic():
        batch = ExportBatch.objects.create(format=fmt, since=since, min_reviews=min_reviews,
                                           created_by=created_by)
        batch.out_dir = str(Path(settings.EXPORT_DIR) / f"batch-{batch.pk}")
        batch.save(update_fields=["out_dir"])
        export_batch_enqueue(batch)
    logger.info("export batch %s (%s) created by user %s", batch.pk, fmt, created_by.pk)
    return batch


def export_batch_retry(*, batch_id: int) -> ExportBatch | None:
    """Queue a failed export again; None when there is no failed export with that id."""
    with transaction.atomic():
        updated = ExportBatch.objects.filter(pk=batch_id, status=ExportBatch.Status.FAILED) \
            .update(status=ExportBatch.Status.PENDING, error_message="", progress=0)
        batch = ExportBatch.objects.filter(pk=batch_id).first()
        if not updated or batch is None:
            return None
        export_batch_enqueue(batch)
    return batch


def export_batch_enqueue(batch: ExportBatch) -> None:
    enqueue_after_commit(
        tasks.run_export_batch, batch, job=f"export {batch.pk}",
        what_to_do="The export request is saved; press Retry when the queue is back.")
