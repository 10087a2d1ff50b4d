"""bench/load.py does not rot: every URL its simulated users request still resolves to the view
it means, every request lands in a reported group, and its seeding still queues review items.

The users run here against a recording client, not a server: nothing is timed.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.urls import resolve

from clinic.models import Consultation
from review.models import ReviewItem

BENCH = Path(settings.BASE_DIR) / "bench" / "load.py"

# The report name of each request -> the URL name it must resolve to.
EXPECTED_VIEWS = {
    "login": "login",
    "history page": "clinic:history",
    "history search": "clinic:history",
    "consultation page": "clinic:consultation",
    "review queue": "review:queue",
    "review item": "review:item",
    "api list": "api-consultations",
    "api detail": "api-consultation",
    "ask: POST": "api-consultations",
    "ask: poll": "api-consultation",
}


@pytest.fixture(scope="module")
def load() -> ModuleType:
    # Without this, importing locust patches the standard library for gevent in the test run.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOCUST_SKIP_MONKEY_PATCH", "1")
        spec = importlib.util.spec_from_file_location("bench_load", BENCH)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_load"] = module
        spec.loader.exec_module(module)
    return module


class FakeResponse:
    def __init__(self, method: str, path: str, *, login_status: int) -> None:
        self.status_code = 200
        self.text = ""
        if method == "POST" and path == "/accounts/login/":
            self.status_code = login_status
        elif method == "POST":
            self.status_code = 201
        self.failed_with: str | None = None

    def json(self) -> dict[str, Any]:
        return {"id": 7, "finished": True, "status": "complete"}

    def failure(self, message: str) -> None:
        self.failed_with = message


class RecordingClient:
    """Stands in for Locust's HttpSession: records what a user requests and answers as a
    healthy server would."""

    def __init__(self, *, login_status: int = 302) -> None:
        self.login_status = login_status
        self.requests: list[tuple[str, str, str]] = []
        self.responses: list[FakeResponse] = []
        self.cookies = {"csrftoken": "token"}

    @contextmanager
    def _request(self, method: str, path: str, name: str) -> Iterator[FakeResponse]:
        self.requests.append((method, path, name))
        response = FakeResponse(method, path, login_status=self.login_status)
        self.responses.append(response)
        yield response

    def get(self, path: str, *, name: str, catch_response: bool = False,
            **kwargs: Any) -> Any:
        context = self._request("GET", path, name)
        if catch_response:
            return context
        with context as response:
            return response

    def post(self, path: str, *, name: str, catch_response: bool = False, **kwargs: Any) -> Any:
        context = self._request("POST", path, name)
        if catch_response:
            return context
        with context as response:
            return response


def run_every_task(load: ModuleType, user_class: Any, account: Any) -> RecordingClient:
    fired: list[dict[str, Any]] = []
    user = user_class.__new__(user_class)
    user.client = RecordingClient()
    user.host = "http://testserver"
    user.environment = SimpleNamespace(events=SimpleNamespace(request=SimpleNamespace(
        fire=lambda **event: fired.append(event))))
    user.on_start()
    assert user.account is account
    for task_function in set(user_class.tasks):
        task_function(user)
    for event in fired:
        assert event["exception"] is None, event
    return user.client


@pytest.fixture
def no_sleep(load: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load.time, "sleep", lambda seconds: None)


@pytest.mark.usefixtures("no_sleep")
@pytest.mark.parametrize("class_name", ["ClinicianUser", "ReviewerUser", "AskingClinician"])
def test_every_url_a_user_requests_resolves_to_the_view_it_means(
        load: ModuleType, monkeypatch: pytest.MonkeyPatch, class_name: str) -> None:
    user_class = getattr(load, class_name)
    account = load.Account("loadbench-clinician-01", "pw", "key", consultation_ids=[3],
                           review_item_ids=[5])
    monkeypatch.setattr(user_class, "accounts", [account])
    client = run_every_task(load, user_class, account)

    names = {name for _, _, name in client.requests}
    assert "login" in names and len(names) > 1
    for method, path, name in client.requests:
        match = resolve(urlsplit(path).path)
        assert match.view_name == EXPECTED_VIEWS[name], (method, path)
    assert not [response.failed_with for response in client.responses if response.failed_with]


def test_every_request_is_in_a_reported_group(load: ModuleType) -> None:
    grouped = {*load.PAGE_NAMES, *load.ASK_NAMES, load.LOGIN_NAME}
    assert set(EXPECTED_VIEWS) <= grouped
    assert not set(load.PAGE_NAMES) & set(load.ASK_NAMES)


def test_a_login_the_server_refuses_is_a_failure(load: ModuleType,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    account = load.Account("loadbench-clinician-01", "wrong", "key", consultation_ids=[3])
    monkeypatch.setattr(load.ClinicianUser, "accounts", [account])
    user = load.ClinicianUser.__new__(load.ClinicianUser)
    # Django answers a refused login with the form again (200), not a redirect.
    user.client = RecordingClient(login_status=200)
    user.host = "http://testserver"
    with pytest.raises(load.StopUser):
        user.on_start()
    assert user.client.responses[-1].failed_with == "login refused (HTTP 200)"


@pytest.mark.django_db
def test_seeding_gives_clinicians_consultations_and_reviewers_queued_items(
        load: ModuleType, settings: Any) -> None:
    settings.REVIEW_SAMPLE_RATE = 0.0  # only the seeded unsupported claims queue an item
    clinicians, reviewers, askers = load.seed(clinicians=2, reviewers=1, askers=1)

    assert [account.username for account in clinicians] == [
        "loadbench-clinician-01", "loadbench-clinician-02"]
    for account in clinicians:
        assert len(account.consultation_ids) == load.CONSULTATIONS_PER_CLINICIAN
        assert account.token
    items = ReviewItem.objects.filter(pk__in=reviewers[0].review_item_ids)
    assert items.count() == 2 * load.CONSULTATIONS_PER_CLINICIAN // load.UNSUPPORTED_EVERY
    assert set(reviewers[0].consultation_ids) == set(
        items.values_list("consultation_id", flat=True))

    # Askers start with no rows: seeded questions would count against their rate limit.
    assert askers[0].username == "loadbench-asker-01" and not askers[0].consultation_ids
    assert not Consultation.objects.filter(user__username="loadbench-asker-01").exists()

    # A second run reuses the accounts and their rows, with a new password.
    again, _, _ = load.seed(clinicians=2, reviewers=1, askers=1)
    assert Consultation.objects.count() == 2 * load.CONSULTATIONS_PER_CLINICIAN
    assert again[0].password != clinicians[0].password
