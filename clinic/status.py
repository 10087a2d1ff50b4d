"""What a consultation's status is, in the words every surface shows (page, history, API,
review queue): one function, so no two places can tell a clinician different things.

    waiting -> retrieving -> generating -> verifying -> answered | abstained | failed | cancelled

The stored `Consultation.status` says whether a job is pending, running or finished; the
display status also says which part of the work is under way, whether an answer was withheld
(and why), what to do after a failure, and how far a deep consult has got, counting only the
steps that ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from clinic.deep import step_is_finished
from clinic.models import Consultation, DeepConsultStep
from modelsvc.client import STOPPED_AT_LENGTH, STOPPED_REPEATING

Status = Consultation.Status
Kind = DeepConsultStep.Kind
StepStatus = DeepConsultStep.Status

LABELS = {
    "waiting": "Waiting",
    "retrieving": "Searching the literature",
    "generating": "Writing",
    "verifying": "Checking the citations",
    "answered": "Answered",
    "abstained": "Answer withheld",
    "failed": "Failed",
    "cancelled": "Cancelled",
}
# The badge's CSS class: green only for an answer given; no answer given is grey, not green.
BADGE = {"answered": "complete", "abstained": "abstained", "failed": "failed",
         "cancelled": "cancelled"}
# The part of the work each deep consult step is.
STEP_STATE = {Kind.PLAN: "generating", Kind.RETRIEVE: "retrieving", Kind.DRAFT: "generating",
              Kind.VERIFY: "verifying", Kind.REVISE: "generating", Kind.FINAL: "verifying"}
STOPPED_BECAUSE = {
    STOPPED_REPEATING: "The model began repeating itself, so its answer was stopped there.",
    STOPPED_AT_LENGTH: "The answer reached the length limit and was cut off there.",
}
FAILED_WHAT_TO_DO = "Your question is saved; press Retry, or ask for a quick answer."
CANCELLED_DEEP = "You cancelled it; press Retry to continue where it stopped."
CANCELLED_QUICK = ("You cancelled it before the answer was finished, so none of it is shown; "
                   "your question is kept. Press Retry to ask it again.")


@dataclass(frozen=True)
class DisplayStatus:
    state: str  # one of LABELS
    label: str
    detail: str  # why (abstained), what to do (failed), what is happening (running)
    finished: bool
    # A deep consult's steps that ran, of those it will run; None for a quick answer.
    steps_done: int | None = None
    steps_total: int | None = None
    stopped_by: str = ""  # "repetition" or "length" when a guard or the limit ended the answer

    @property
    def badge(self) -> str:
        return BADGE.get(self.state, "running")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "badge": self.badge}


def consultation_display_status(consultation: Consultation,
                                steps: Sequence[DeepConsultStep] | None = None, *,
                                stopped_by: str = "", queued_ahead: int | None = None,
                                ) -> DisplayStatus:
    """The status to show. `steps` (a deep consult's, in order) gives the step and progress;
    `stopped_by` is the answer's finish reason when a guard or the length limit stopped it;
    `queued_ahead` is how many deep consults wait before this one."""
    steps = list(steps) if steps is not None else None
    done = total = None
    if consultation.mode == Consultation.Mode.DEEP and steps is not None:
        done, total = _progress(consultation, steps)
    stopped = stopped_by if stopped_by in STOPPED_BECAUSE else ""

    def make(state: str, detail: str = "") -> DisplayStatus:
        return DisplayStatus(state=state, label=LABELS[state], detail=detail,
                             finished=consultation.is_finished, steps_done=done,
                             steps_total=total, stopped_by=stopped)

    if consultation.status == Status.COMPLETE:
        if consultation.abstained:
            return make("abstained", _abstained_reason(consultation, stopped))
        return make("answered", STOPPED_BECAUSE.get(stopped, ""))
    if consultation.status == Status.FAILED:
        message = consultation.error_message or "The answer could not be completed."
        if "Retry" not in message:
            message = f"{message} {FAILED_WHAT_TO_DO}"
        return make("failed", message)
    if consultation.status == Status.CANCELLED:
        return make("cancelled", CANCELLED_DEEP if consultation.mode == Consultation.Mode.DEEP
                    else CANCELLED_QUICK)
    if consultation.mode == Consultation.Mode.DEEP:
        return _deep_running(consultation, steps, queued_ahead, make)
    return _quick_running(consultation, make)


def _progress(consultation: Consultation, steps: list[DeepConsultStep]) -> tuple[int, int]:
    # A step the job decided to skip is not work still to do; a step never reached is, and
    # neither counts as done.
    decided_skip = [s for s in steps if s.status == StepStatus.SKIPPED and step_is_finished(s)]
    ran = sum(1 for s in steps if s.status == StepStatus.DONE)
    total = (len(steps) or len(Kind)) - len(decided_skip)
    return ran, total


def _abstained_reason(consultation: Consultation, stopped: str) -> str:
    reason = ""
    if consultation.withheld_reason:
        reason = Consultation.WithheldReason(consultation.withheld_reason).label + "."
    elif consultation.error_message:
        reason = consultation.error_message
    else:
        reason = "The evidence found does not support the answer the model wrote."
    if stopped:
        reason = f"{STOPPED_BECAUSE[stopped]} {reason}"
    return reason


def _deep_running(consultation: Consultation, steps: list[DeepConsultStep] | None,
                  queued_ahead: int | None, make: Any) -> DisplayStatus:
    running = next((s for s in steps or [] if s.status == StepStatus.RUNNING), None)
    if running is not None:
        detail = f"Step {running.position + 1} of {len(steps or [])}: {running.title}"
        written = running.output.get("tokens_so_far")
        if written:
            detail += f" ({written} tokens written)"
        return make(STEP_STATE.get(Kind(running.kind), "generating"), detail)
    retrying = next((s for s in steps or [] if s.output.get("retrying")), None)
    if retrying is not None:
        return make("waiting", f"“{retrying.title}” will be tried again shortly: "
                    f"{retrying.output.get('error', '')}".strip())
    if consultation.cancel_requested:
        return make("waiting", "Cancelling…")
    if queued_ahead:
        plural = "s" if queued_ahead != 1 else ""
        return make("waiting", f"In the queue: {queued_ahead} deep consult{plural} ahead of "
                    "this one.")
    return make("waiting", "Waiting for a worker to start it.")


def _quick_running(consultation: Consultation, make: Any) -> DisplayStatus:
    if consultation.status == Status.PENDING:
        return make("waiting", "")
    if not consultation.stage_timings:
        # prepare_answer stores its timings together with the passages it found.
        return make("retrieving", "")
    return make("generating", "" if consultation.answer_text
                else "Waiting for the model's first words.")
