"""The review queue listens to the clinic: every finished answer and every feedback may queue
(or re-prioritise) a review item."""

from typing import Any

from django.dispatch import receiver

from clinic.signals import answer_finished, feedback_received
from review.services import enqueue_for_review


@receiver(answer_finished, dispatch_uid="review.enqueue_finished_answer")
def queue_finished_answer(sender: Any, *, consultation_id: int, **kwargs: Any) -> None:
    enqueue_for_review(consultation_id=consultation_id)


@receiver(feedback_received, dispatch_uid="review.enqueue_after_feedback")
def queue_after_feedback(sender: Any, *, consultation_id: int, **kwargs: Any) -> None:
    enqueue_for_review(consultation_id=consultation_id)
