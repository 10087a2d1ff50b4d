"""Writes for evaluation runs started from the dashboard (queue a run, resume a stopped one),
and the rollback of a capability to a version that served it before."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.utils import timezone

from evaluation import tasks
from evaluation.models import EvalRun, PromotionDecision
from jobs.queueing import enqueue_after_commit
from modelsvc.models import ServedModel

logger = logging.getLogger(__name__)


def eval_run_enqueue(run: EvalRun) -> None:
    """Queue the run after commit; a broker outage marks it failed, keeping the run."""
    enqueue_after_commit(
        tasks.run_evaluation, run, job=f"evaluation run {run.pk}",
        what_to_do="The run is saved; press Resume when the queue is back (or run "
        f"`python manage.py evaluate --resume {run.pk}`).")


def eval_run_resume(*, run_id: int) -> EvalRun | None:
    """Queue a failed or cancelled run again; answers it already has are kept. None when no
    stopped run has that id."""
    with transaction.atomic():
        updated = EvalRun.objects.filter(
            pk=run_id, status__in=[EvalRun.Status.FAILED, EvalRun.Status.CANCELLED],
        ).update(status=EvalRun.Status.PENDING, error_message="", cancel_requested=False,
                 finished_at=None, updated_at=timezone.now())
        run = EvalRun.objects.filter(pk=run_id).first()
        if not updated or run is None:
            return None
        eval_run_enqueue(run)
    logger.info("eval run %s queued again", run_id)
    return run


class RollbackRefused(Exception):
    """A rollback that cannot happen, with the sentence saying why and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def rollback_targets(capability: str) -> list[ServedModel]:
    """The versions a capability may roll back to: every retired one (only a serving model is
    ever retired, so each once served it), the most recently retired first."""
    return list(ServedModel.objects.filter(capability=capability,
                                           status=ServedModel.Status.RETIRED)
                .order_by("-updated_at", "-id"))


def previous_version(capability: str, current: ServedModel | None) -> ServedModel | None:
    """The version that served `capability` before `current`: the one the decision that made
    `current` serve replaced, while it is retired; else the most recently retired one."""
    targets = rollback_targets(capability)
    if current is not None:
        decision = (PromotionDecision.objects.filter(served_model=current, promoted=True,
                                                     compared_with__isnull=False)
                    .order_by("-created_at", "-id").first())
        replaced = [model for model in targets
                    if decision is not None and model.pk == decision.compared_with_id]
        if replaced:
            return replaced[0]
    return targets[0] if targets else None


def _rollback_target(capability: str, to: str | None, current: ServedModel | None,
                     rows: list[ServedModel]) -> ServedModel:
    if not to:
        target = previous_version(capability, current)
        if target is None:
            raise RollbackRefused(
                f"No earlier version of {capability} to roll back to: "
                + (f"{current.name} is the only version that has served it."
                   if current else "no version has served it yet.")
                + " Promote a candidate through the gate instead.")
        return target
    target = next((model for model in rows if model.name == to), None)
    if target is None:
        elsewhere = ServedModel.objects.filter(name=to).first()
        if elsewhere is not None:
            raise RollbackRefused(f"{to} is a {elsewhere.capability} model, not a {capability} "
                                  "one; pick an earlier version of the same capability.")
        raise RollbackRefused(f"There is no model version named {to!r}; pick one of the "
                              f"retired {capability} versions listed on /evaluation/models/.")
    if target.status == ServedModel.Status.SERVING:
        raise RollbackRefused(f"{to} already serves {capability}; pick an earlier version.")
    if target.status == ServedModel.Status.CANDIDATE:
        raise RollbackRefused(f"{to} is a candidate that has never served {capability}; "
                              "promote it through the gate instead of rolling back to it.")
    return target


def capability_rollback(*, capability: str, reason: str, user: Any = None,
                        to: str | None = None, expected_current_id: int | None = None,
                        source: str = "") -> PromotionDecision:
    """Serve an earlier (retired) version of a capability again in place of the serving one,
    which is retired; recorded as a rollback decision with who, from, to and the reason.

    `to` names the version (ServedModel.name); by default the one that served before.
    `expected_current_id` is the serving model's id the admin saw (0: none served; None: do
    not check): if another admin changed the capability meanwhile, the rollback is refused
    rather than undoing their decision. Only statuses change; what a version serves never does.
    Raises RollbackRefused with a sentence saying what to do."""
    if capability not in ServedModel.Capability.values:
        raise RollbackRefused(f"There is no capability {capability!r}; choose one of "
                              f"{', '.join(ServedModel.Capability.values)}.")
    reason = reason.strip()
    if not reason:
        raise RollbackRefused("A rollback needs a reason (why the earlier version should "
                              "serve again); it is recorded with the decision.")
    with transaction.atomic():
        # Lock the capability's candidates first, then all its versions, both in id order:
        # promote() locks its candidate before it retires the serving model, so taking the
        # locks in the same order means a promotion and a rollback of one capability wait
        # for each other instead of deadlocking, and two rollbacks run one after the other.
        versions = ServedModel.objects.filter(capability=capability).order_by("pk")
        list(versions.filter(status=ServedModel.Status.CANDIDATE).select_for_update())
        rows = list(versions.select_for_update())
        serving = sorted((model for model in rows if model.status == ServedModel.Status.SERVING),
                         key=lambda model: (model.updated_at, model.pk), reverse=True)
        current = serving[0] if serving else None
        if expected_current_id is not None and (current.pk if current else 0) != \
                expected_current_id:
            raise RollbackRefused(
                f"{capability} changed while you were deciding: "
                f"{current.name if current else 'no model'} serves it now. Reload the page and "
                "decide again.")
        target = _rollback_target(capability, to, current, rows)
        now = timezone.now()
        ServedModel.objects.filter(pk__in=[model.pk for model in serving]).update(
            status=ServedModel.Status.RETIRED, updated_at=now)
        ServedModel.objects.filter(pk=target.pk).update(status=ServedModel.Status.SERVING,
                                                        updated_at=now)
        by = f" by {user}" if user is not None else (f" ({source})" if source else "")
        decision = PromotionDecision.objects.create(
            kind=PromotionDecision.Kind.ROLLBACK, served_model=target, compared_with=current,
            decided_by=user, gate_passed=None, promoted=True, override_reason=reason,
            reasons=[f"Rolled back {capability} from "
                     f"{current.name if current else 'no serving model'} to {target.name}{by}."])
    logger.info("rollback of %s from %s to %s by %s: %s", capability,
                current.name if current else None, target.name, user or source or "-", reason)
    return decision
