"""An admin rolls a capability back to an earlier version, from the models page or the command,
with a recorded reason; the next quick answer routed to that capability is served by it."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone

from clinic.models import Consultation
from evaluation.gate import promote
from evaluation.models import PromotionDecision
from evaluation.services import RollbackRefused, capability_rollback
from modelsvc.models import ServedModel
from tests.modelsvc.doubles import ModelServerDouble, Reply
from tests.web.streams import parse_events, read_stream


@pytest.fixture
def versions(db: None, admin_user: User, settings: Any) -> dict[str, ServedModel]:
    """v0 and v1 served literature once; v2 replaced v1 through the gate (overridden) and
    serves now. v0 was retired last, so "the version before v2" must come from the record."""
    settings.EVAL_GATE_SUITES = ["pubmedqa"]
    made = {name: ServedModel.objects.create(
        name=name, base_model="smollm2", served_name=f"{name}-served",
        adapter_path=f"/adapters/{name}" if name != "v0" else "", capability="literature",
        status=status) for name, status in (("v0", "retired"), ("v1", "serving"),
                                            ("v2", "candidate"))}
    promote(made["v2"], user=admin_user, override=True, override_reason="Urgent fix")
    ServedModel.objects.filter(pk=made["v0"].pk).update(
        updated_at=timezone.now() + timedelta(minutes=1))
    return made


def _statuses() -> dict[str, str]:
    return dict(ServedModel.objects.values_list("name", "status"))


def _rollbacks() -> Any:
    return PromotionDecision.objects.filter(kind=PromotionDecision.Kind.ROLLBACK)


def test_an_admin_rolls_back_from_the_page_and_the_lineage_shows_it(
        client: Client, admin_user: User, versions: dict[str, ServedModel]) -> None:
    client.force_login(admin_user)
    page = client.get("/evaluation/models/")
    # The version v2 replaced is offered first, though v0 was retired more recently.
    assert page.context["rollbacks"][0]["form"]["to"].value() == "v1"

    response = client.post("/evaluation/models/rollback", {
        "capability": "literature", "literature-current": versions["v2"].pk,
        "literature-to": "v1", "literature-reason": "v2 cites retracted trials"})

    assert response.status_code == 302
    assert _statuses() == {"v0": "retired", "v1": "serving", "v2": "retired"}
    decision = _rollbacks().get()
    assert (decision.served_model, decision.compared_with, decision.decided_by) == (
        versions["v1"], versions["v2"], admin_user)
    assert decision.override_reason == "v2 cites retracted trials"
    assert decision.promoted and decision.gate_passed is None
    page_text = client.get("/evaluation/models/").content.decode()
    assert "literature rolled back: v1 serves it again in place of v2" in page_text
    assert "rolled back to v1: admin" in page_text
    assert "served again by rollback from v2: admin" in page_text
    assert page_text.count("(reason: v2 cites retracted trials)") == 2


def test_a_rollback_without_a_reason_is_refused_and_keeps_the_choice(
        client: Client, admin_user: User, versions: dict[str, ServedModel]) -> None:
    client.force_login(admin_user)

    response = client.post("/evaluation/models/rollback", {
        "capability": "literature", "literature-current": versions["v2"].pk,
        "literature-to": "v0", "literature-reason": "   "})

    assert response.status_code == 400
    page = response.content.decode()
    assert "Say why you roll back: the reason is recorded with the decision." in page
    [v0_radio] = re.findall(r'<input type="radio" name="literature-to" value="v0"[^>]*>', page)
    assert "checked" in v0_radio
    assert _statuses() == {"v0": "retired", "v1": "retired", "v2": "serving"}
    assert not _rollbacks().exists()


def test_a_rollback_decided_on_a_stale_page_is_refused(
        client: Client, admin_user: User, versions: dict[str, ServedModel]) -> None:
    capability_rollback(capability="literature", to="v1", reason="first admin", user=admin_user)
    client.force_login(admin_user)

    # The second admin's page still showed v2 serving; they meant to replace v2, not v1.
    response = client.post("/evaluation/models/rollback", {
        "capability": "literature", "literature-current": versions["v2"].pk,
        "literature-to": "v0", "literature-reason": "second admin"})

    assert response.status_code == 409
    assert "literature changed while you were deciding: v1 serves it now." in \
        response.content.decode()
    assert _statuses() == {"v0": "retired", "v1": "serving", "v2": "retired"}
    assert list(_rollbacks().values_list("override_reason", flat=True)) == ["first admin"]


@pytest.mark.parametrize("persona", ["clinician", "reviewer"])
def test_non_admins_cannot_roll_back(client: Client, persona: str, request: Any,
                                     versions: dict[str, ServedModel]) -> None:
    client.force_login(request.getfixturevalue(persona))

    response = client.post("/evaluation/models/rollback", {
        "capability": "literature", "literature-current": versions["v2"].pk,
        "literature-to": "v1", "literature-reason": "not mine to decide"})

    assert response.status_code == 404  # the dashboard hides itself from non-admins
    assert _statuses()["v2"] == "serving"
    assert not _rollbacks().exists()


def test_the_command_rolls_back_to_the_previous_version_by_default(
        versions: dict[str, ServedModel], admin_user: User, capsys: Any) -> None:
    call_command("rollback_model", "--capability", "literature", "--reason",
                 "regression seen on the ward", "--by", admin_user.username)

    assert _statuses() == {"v0": "retired", "v1": "serving", "v2": "retired"}
    decision = _rollbacks().get()
    assert (decision.served_model.name, decision.compared_with.name) == ("v1", "v2")
    assert decision.decided_by == admin_user
    assert decision.override_reason == "regression seen on the ward"
    assert "literature: v1 serves again in place of v2" in capsys.readouterr().out

    # --to names any earlier version; rolling back again is recorded the same way.
    call_command("rollback_model", "--capability", "literature", "--to", "v0", "--reason",
                 "back to the base")
    assert _statuses() == {"v0": "serving", "v1": "retired", "v2": "retired"}
    latest = _rollbacks().first()
    assert latest is not None and latest.decided_by is None
    assert "rollback_model command" in latest.reasons[0]


@pytest.mark.parametrize(("arguments", "message"), [
    (["--capability", "literature", "--reason", " "], "A rollback needs a reason"),
    (["--capability", "oncology", "--reason", "x"], "There is no capability 'oncology'"),
    (["--capability", "literature", "--to", "v9", "--reason", "x"],
     "There is no model version named 'v9'"),
    (["--capability", "literature", "--to", "v2", "--reason", "x"],
     "v2 already serves literature"),
    (["--capability", "knowledge", "--reason", "x"],
     "No earlier version of knowledge to roll back to: k1 is the only version"),
])
def test_the_command_says_why_it_cannot_roll_back(
        versions: dict[str, ServedModel], arguments: list[str], message: str) -> None:
    ServedModel.objects.create(name="k1", base_model="smollm2", served_name="k1",
                               capability="knowledge", status="serving")

    with pytest.raises(CommandError, match=message):
        call_command("rollback_model", *arguments)

    assert _statuses()["v2"] == "serving" and _statuses()["k1"] == "serving"
    assert not _rollbacks().exists()


def test_a_candidate_that_never_served_is_not_a_rollback_target(
        versions: dict[str, ServedModel], admin_user: User) -> None:
    ServedModel.objects.create(name="v3", base_model="smollm2", served_name="v3",
                               capability="literature")

    with pytest.raises(RollbackRefused, match="v3 is a candidate that has never served"):
        capability_rollback(capability="literature", to="v3", reason="x", user=admin_user)


def test_two_admins_rolling_back_at_once_leave_one_version_serving(
        transactional_db: None, versions: dict[str, ServedModel], admin_user: User) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite lets one writer in at a time anyway")
    first_has_rolled_back, release_first = threading.Event(), threading.Event()
    refusals: list[str] = []

    def first_admin() -> None:
        try:
            with transaction.atomic():
                capability_rollback(capability="literature", to="v1", reason="first",
                                    user=admin_user, expected_current_id=versions["v2"].pk)
                first_has_rolled_back.set()
                release_first.wait(60)
        finally:
            connection.close()

    def second_admin() -> None:
        first_has_rolled_back.wait(60)
        try:
            capability_rollback(capability="literature", to="v0", reason="second",
                                user=admin_user, expected_current_id=versions["v2"].pk)
        except RollbackRefused as refused:
            refusals.append(refused.message)
        finally:
            connection.close()

    threads = [threading.Thread(target=first_admin), threading.Thread(target=second_admin)]
    for thread in threads:
        thread.start()
    _wait_until_a_query_waits_for_a_row_lock()
    release_first.set()
    for thread in threads:
        thread.join(60)

    assert refusals == ["literature changed while you were deciding: v1 serves it now. "
                        "Reload the page and decide again."]
    assert _statuses() == {"v0": "retired", "v1": "serving", "v2": "retired"}
    assert list(_rollbacks().values_list("override_reason", flat=True)) == ["first"]


def _wait_until_a_query_waits_for_a_row_lock() -> None:
    for _ in range(600):
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                           "current_database() AND wait_event_type = 'Lock'")
            if cursor.fetchone()[0]:
                return
        time.sleep(0.05)
    raise AssertionError("the second rollback never waited for the first one's row locks")


# --- the next routed answer -----------------------------------------------------------------

@pytest.fixture
def model_double(settings: Any) -> Iterator[ModelServerDouble]:
    with ModelServerDouble([Reply(stream=["Aspirin lowers ", "the risk of stroke [1]."])]) \
            as double:
        settings.MODEL_BASE_URL, settings.MODEL_NAME = double.base_url, "unregistered-model"
        settings.MODEL_MAX_RETRIES = 0
        yield double


def _quick_answer(client: Client, clinician: User) -> Consultation:
    client.force_login(clinician)
    response = client.post("/", {"question": "Does low-dose aspirin prevent recurrent stroke?",
                                 "quick": "1"})
    assert response.status_code == 302, response.content
    consultation = Consultation.objects.latest("id")
    events = parse_events(read_stream(client.get(f"/consultations/{consultation.pk}/events")))
    assert events[-1][0] == "final", events
    consultation.refresh_from_db()
    return consultation


def test_the_next_question_is_answered_by_the_rolled_back_version(
        client: Client, clinician: User, admin_user: User, tiny_index: Path,
        model_double: ModelServerDouble, settings: Any) -> None:
    settings.EVAL_GATE_SUITES = ["pubmedqa"]
    v1 = ServedModel.objects.create(name="v1", base_model="smollm2", served_name="v1-served",
                                    capability="literature", status="serving")
    v2 = ServedModel.objects.create(name="v2", base_model="smollm2", served_name="v2-served",
                                    adapter_path="/adapters/v2", capability="literature")
    promote(v2, user=admin_user, override=True, override_reason="Urgent fix")
    before = _quick_answer(client, clinician)

    capability_rollback(capability="literature", reason="v2 misreads dosing",
                        user=admin_user)
    after = _quick_answer(client, clinician)

    assert before.routed_model_name == "v2-served"
    assert after.status == "complete", after.error_message
    assert after.routed_model_name == "v1-served"
    assert [request["model"] for request in model_double.requests if request.get("stream")] \
        == ["v2-served", "v1-served"]
    assert after.model_calls.get(purpose="answer").served_model_id == v1.pk
