"""Writes: every question, answer, feedback and decision is a row before success is shown."""

from __future__ import annotations

import logging
import unicodedata
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from clinic import quick, tasks
from clinic.deep import consultation_cancel_now, reset_unfinished_steps
from clinic.models import Consultation, Feedback
from clinic.signals import feedback_received
from jobs.queueing import enqueue_after_commit

logger = logging.getLogger(__name__)


class QuestionRejected(ValueError):
    """The question cannot be asked as typed; the message says what to change."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RateLimited(Exception):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


def clean_question(text: str, *, field: str = "question", required: bool = True) -> str:
    """Normalise a question; refuse empty, oversized or binary input with a clear reason."""
    if "\x00" in text:
        raise QuestionRejected(f"The {field} contains binary data (a NUL byte); paste plain "
                               "text instead.")
    cleaned = unicodedata.normalize("NFC", text).strip()
    control = sum(1 for char in cleaned
                  if unicodedata.category(char) in {"Cc", "Cs", "Co"} and char not in "\n\r\t")
    if control and control / max(len(cleaned), 1) > 0.01:
        raise QuestionRejected(f"The {field} contains {control} control or binary characters; "
                               "paste plain text instead.")
    if required and not cleaned:
        raise QuestionRejected(f"The {field} is empty; type a clinical question.")
    limit = settings.QUESTION_MAX_CHARS
    if len(cleaned) > limit:
        raise QuestionRejected(f"The {field} is {len(cleaned):,} characters long; the limit is "
                               f"{limit:,}. Shorten it to the clinical question and the "
                               "essential context.")
    return cleaned


def check_rate_limit(user: User) -> None:
    """Counted in the database, so the limit holds across web workers and through a Redis outage.

    Only atomic inside `consultation_create`'s transaction, which first locks the account (see
    `_lock_account`): two requests never count the same questions."""
    window_start = timezone.now() - timedelta(minutes=1)
    recent = Consultation.objects.filter(user=user, created_at__gte=window_start).count()
    if recent >= settings.RATE_LIMIT_PER_MINUTE:
        raise RateLimited(
            f"You have asked {recent} questions in the last minute, the most allowed is "
            f"{settings.RATE_LIMIT_PER_MINUTE}. Wait a minute and send it again; this one was "
            "not stored.", retry_after=60)


def consultation_create(*, user: User, question: str, patient_note: str = "",
                        mode: str = Consultation.Mode.QUICK,
                        include_retracted: bool = False) -> Consultation:
    question = clean_question(question)
    patient_note = clean_question(patient_note, field="patient note", required=False)
    if mode not in Consultation.Mode.values:
        raise QuestionRejected(f"Unknown mode {mode!r}; choose quick or deep.")
    with transaction.atomic():
        _lock_account(user)
        check_rate_limit(user)
        consultation = Consultation.objects.create(
            user=user, question=question, patient_note=patient_note, mode=mode,
            include_retracted=include_retracted,
            token_budget=(settings.DEEP_CONSULT_TOKEN_BUDGET if mode == Consultation.Mode.DEEP
                          else 0),
        )
        logger.info("consultation %s created (mode %s, %d chars)", consultation.pk, mode,
                    len(question))
        if mode == Consultation.Mode.DEEP:
            deep_consult_enqueue(consultation)
        else:
            quick_answer_start(consultation)
    return consultation


def _lock_account(user: User) -> None:
    """Serialise one account's questions until the transaction ends, so the rate limit's count
    and insert are one step: on PostgreSQL a row lock on the user; on SQLite every transaction
    already holds the database's write lock from its start (transaction_mode IMMEDIATE)."""
    User.objects.select_for_update().filter(pk=user.pk).values_list("pk", flat=True).first()


def quick_answer_start(consultation: Consultation) -> None:
    """Start generating the answer once the row is committed (the page or API client need not
    be connected); a generator already at work, here or in another process, is left to it."""
    consultation_id = consultation.pk
    transaction.on_commit(lambda: quick.answer_in_background(consultation_id))


def quick_answer_resume(*, consultation: Consultation) -> None:
    """A look at an answer that nobody is generating (its web process died, or it never
    started) starts it here, so a client that only polls still gets its answer."""
    if quick.is_orphaned(consultation):
        quick_answer_start(consultation)


def deep_consult_enqueue(consultation: Consultation) -> None:
    """Queue the job after the row is committed; a broker outage marks it failed, keeping it."""
    enqueue_after_commit(
        tasks.run_deep_consult, consultation, job="the deep consult",
        what_to_do="Your question is saved; press Retry when it is back, or ask for a quick "
        "answer.")


def consultation_retry(*, consultation: Consultation) -> Consultation:
    """Put a failed or cancelled consultation back to pending; the page or queue picks it up.

    A deep consult resumes from its first unfinished step: the steps before it keep what they
    stored, and that step and every later one wait to run again.
    """
    with transaction.atomic():
        updated = Consultation.objects.filter(
            pk=consultation.pk,
            status__in=[Consultation.Status.FAILED, Consultation.Status.CANCELLED],
        ).update(status=Consultation.Status.PENDING, error_message="", cancel_requested=False,
                 attempts=0, claimed_by="", claimed_at=None, completed_at=None,
                 updated_at=timezone.now())
        consultation.refresh_from_db()
        if updated and consultation.mode == Consultation.Mode.DEEP:
            reset_unfinished_steps(consultation.pk)
            deep_consult_enqueue(consultation)
        elif updated:
            quick_answer_start(consultation)
    if updated:
        logger.info("consultation %s retried", consultation.pk)
    return consultation


def consultation_cancel(*, consultation: Consultation) -> Consultation:
    """It ends as cancelled at once. A deep consult's job stops at its next check, within
    seconds; a quick answer's generator loses its claim, so it stops at once in this process,
    within a heartbeat in another, and writes nothing more (its partial text is never shown)."""
    if consultation.mode == Consultation.Mode.DEEP:
        consultation_cancel_now(consultation.pk)
    else:
        now = timezone.now()
        cancelled = Consultation.objects.filter(
            pk=consultation.pk, mode=Consultation.Mode.QUICK,
            status__in=[Consultation.Status.PENDING, Consultation.Status.RUNNING],
        ).update(status=Consultation.Status.CANCELLED, cancel_requested=True, claimed_by="",
                 claimed_at=None, error_message="", completed_at=now, updated_at=now)
        if cancelled:
            consultation_id = consultation.pk
            transaction.on_commit(lambda: quick.stop_local(consultation_id))
            logger.info("quick answer %s cancelled", consultation_id)
    consultation.refresh_from_db()
    return consultation


FEEDBACK_PROBLEMS = set(Feedback.Problem.values)


def feedback_create(*, consultation: Consultation, user: User, helpful: bool, comment: str = "",
                    problems: list[str] | None = None, correction: str = "") -> Feedback:
    problems = sorted(set(problems or []))
    unknown = [problem for problem in problems if problem not in FEEDBACK_PROBLEMS]
    if unknown:
        raise QuestionRejected(f"Unknown problem(s) {', '.join(unknown)}; choose from "
                               f"{', '.join(sorted(FEEDBACK_PROBLEMS))}.")
    comment = clean_question(comment, field="comment", required=False)
    correction = clean_question(correction, field="correction", required=False)
    with transaction.atomic():
        feedback = Feedback.objects.create(consultation=consultation, user=user, helpful=helpful,
                                           comment=comment, problems=problems,
                                           correction=correction)
        feedback_received.send(sender=Feedback, consultation_id=consultation.pk,
                               feedback_id=feedback.pk)
    return feedback
