"""A load check with Locust: simulated clinicians and reviewers against a running server.

Prints figures, asserts nothing (the exit code is non-zero only when the bench itself crashes).

Start the product first (`./run`, or `python -m launcher.run` with the same environment), then
run this with *the same environment* (VAR_DIR, DATABASE_URL): before the load it creates its
own accounts directly in that database (`loadbench-clinician-NN`, `loadbench-reviewer-NN`,
`loadbench-asker-NN`; one password generated for this run and never written anywhere, an API
token each) and, once, 25 answered consultations per clinician (synthetic questions, no
patient data), a fifth of them with an unsupported claim so the review queue has items. Use a
scratch VAR_DIR: the seeded rows stay.

    VAR_DIR=/tmp/var_bench nice .venv/bin/python bench/load.py \\
        [--host http://127.0.0.1:8000] [--users 50] [--spawn-rate 5] [--duration 120] \\
        [--reviewers 10] [--askers 5]

The users (Locust, headless, in this process):
- clinicians browse: their history page (plain and searched), one of their consultation
  pages, the JSON API list and detail;
- reviewers: the review queue and review item pages, and the consultation of a queued item;
- askers (a small share) ask a quick question through the JSON API, poll it until it is
  answered, then think for 5-15 s.

It prints, per endpoint: requests, failures, p50/p95/p99 ms; then the pages that never call
the model (target: p95 <= 200 ms, no failure) apart from the asking ones, and the load average.
Statistics are reset once every user has logged in, so logins (a deliberately slow password
hash) are reported on their own.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import random
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

# Locust patches the standard library for gevent on import, so it is imported before anything
# that opens sockets (Django's database connection, requests).
import gevent
from locust import HttpUser, User, between, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.stats import RequestStats, StatsEntry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.questions import QUESTIONS  # noqa: E402

CLINICIAN_PREFIX = "loadbench-clinician-"
ASKER_PREFIX = "loadbench-asker-"  # no seeded rows: they would count against the rate limit
REVIEWER_PREFIX = "loadbench-reviewer-"
CONSULTATIONS_PER_CLINICIAN = 25
UNSUPPORTED_EVERY = 5  # one seeded consultation in five gets an unsupported claim -> review
DEFAULT_HOST = "http://127.0.0.1:8000"  # ./run's WEB_HOST:WEB_PORT defaults

# Endpoint groups as reported; the first set never calls the model.
PAGE_NAMES = ("history page", "history search", "consultation page", "review queue",
              "review item", "api list", "api detail")
ASK_NAMES = ("ask: POST", "ask: poll", "ask: answered")
LOGIN_NAME = "login"

SEARCH_TERMS = ["aspirin", "metformin", "statins", "vitamin"]


@dataclass
class Account:
    username: str
    password: str
    token: str
    consultation_ids: list[int] = field(default_factory=list)
    review_item_ids: list[int] = field(default_factory=list)


class BenchUser(HttpUser):
    """Logs in through the login form once (a session cookie for the pages) and keeps the
    account's API token for the JSON API."""

    abstract = True
    accounts: ClassVar[list[Account]] = []
    _turn: ClassVar[itertools.count[int]]
    logged_in: ClassVar[int] = 0
    account: Account

    def on_start(self) -> None:
        if not self.accounts:
            raise StopUser
        self.account = self.accounts[next(self._turn) % len(self.accounts)]
        self.client.get("/accounts/login/", name=LOGIN_NAME)
        csrf = self.client.cookies.get("csrftoken", "")
        with self.client.post("/accounts/login/", name=LOGIN_NAME, allow_redirects=False,
                              catch_response=True,
                              data={"username": self.account.username,
                                    "password": self.account.password,
                                    "csrfmiddlewaretoken": csrf, "next": "/"},
                              headers={"Referer": f"{self.host}/accounts/login/"}) as response:
            # Counted either way, so the measurement never waits for a user that gave up.
            BenchUser.logged_in += 1
            if response.status_code != 302:
                response.failure(f"login refused (HTTP {response.status_code})")
                raise StopUser

    def page(self, path: str, name: str) -> None:
        """A page that must answer 200 itself: a redirect (to the login page) is a failure."""
        with self.client.get(path, name=name, allow_redirects=False,
                             catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")

    def api_get(self, path: str, name: str) -> dict[str, Any] | None:
        with self.client.get(path, name=name, catch_response=True,
                             headers={"Authorization": f"Token {self.account.token}"}
                             ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return None
            body: dict[str, Any] = response.json()
            return body


class ClinicianUser(BenchUser):
    accounts: ClassVar[list[Account]] = []
    _turn = itertools.count()
    wait_time = between(1, 3)

    def own_consultation(self) -> int:
        return random.choice(self.account.consultation_ids)

    @task(4)
    def history(self) -> None:
        self.page("/history/", "history page")

    @task(1)
    def history_search(self) -> None:
        self.page(f"/history/?q={random.choice(SEARCH_TERMS)}", "history search")

    @task(4)
    def consultation(self) -> None:
        self.page(f"/consultations/{self.own_consultation()}/", "consultation page")

    @task(2)
    def api_list(self) -> None:
        self.api_get("/api/v1/consultations", "api list")

    @task(2)
    def api_detail(self) -> None:
        self.api_get(f"/api/v1/consultations/{self.own_consultation()}", "api detail")


class ReviewerUser(BenchUser):
    accounts: ClassVar[list[Account]] = []
    _turn = itertools.count()
    wait_time = between(1, 3)
    fixed_count = 10

    @task(3)
    def queue(self) -> None:
        self.page("/review/", "review queue")

    @task(3)
    def item(self) -> None:
        self.page(f"/review/items/{random.choice(self.account.review_item_ids)}/",
                  "review item")

    @task(1)
    def queued_consultation(self) -> None:
        self.page(f"/consultations/{random.choice(self.account.consultation_ids)}/",
                  "consultation page")


class AskingClinician(BenchUser):
    """Asks a quick question through the API, polls until it is answered, then thinks."""

    accounts: ClassVar[list[Account]] = []
    _turn = itertools.count()
    wait_time = between(5, 15)
    fixed_count = 5
    answer_timeout_s: ClassVar[float] = 180.0

    @task
    def ask(self) -> None:
        started = time.perf_counter()
        auth = {"Authorization": f"Token {self.account.token}"}
        with self.client.post("/api/v1/consultations", name="ask: POST", catch_response=True,
                              json={"question": random.choice(QUESTIONS)},
                              headers=auth) as response:
            if response.status_code != 201:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            consultation_id = response.json()["id"]
        snapshot: dict[str, Any] | None = None
        while time.perf_counter() - started < self.answer_timeout_s:
            time.sleep(1)  # gevent-patched: yields to the other users
            snapshot = self.api_get(f"/api/v1/consultations/{consultation_id}", "ask: poll")
            if snapshot is not None and snapshot["finished"]:
                break
        status = snapshot["status"] if snapshot else "unknown"
        finished = bool(snapshot and snapshot["finished"])
        failure: Exception | None = None
        if not finished:
            failure = TimeoutError(f"not answered after {self.answer_timeout_s:.0f} s")
        elif status != "complete":
            failure = RuntimeError(f"ended {status}")
        self.environment.events.request.fire(
            request_type="ANSWER", name="ask: answered", context={}, response=None,
            response_time=(time.perf_counter() - started) * 1000, response_length=0,
            exception=failure)


USER_CLASSES: list[type[BenchUser]] = [ClinicianUser, ReviewerUser, AskingClinician]


# --- Accounts and data, written straight into the server's database ------------------------

def seed(*, clinicians: int, reviewers: int, askers: int = 0
         ) -> tuple[list[Account], list[Account], list[Account]]:
    """Bench accounts and their consultations (created once; the password is new each run)."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    # Imported here, after django.setup(): the models need configured settings.
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import Group, User
    from django.db import transaction
    from rest_framework.authtoken.models import Token

    from clinic.models import Claim, Consultation, RetrievedPassage
    from clinic.roles import CLINICIAN, REVIEWER
    from review.models import ReviewItem
    from review.services import enqueue_for_review

    password = secrets.token_urlsafe(16)
    hashed = make_password(password)  # one hash for every bench account: hashing is slow

    def accounts(prefix: str, count: int, role: str) -> list[Account]:
        group = Group.objects.get(name=role)
        made = []
        for number in range(1, count + 1):
            user, _ = User.objects.get_or_create(username=f"{prefix}{number:02d}")
            user.password = hashed
            user.save(update_fields=["password"])
            user.groups.add(group)
            token, _ = Token.objects.get_or_create(user=user)
            made.append(Account(user.username, password, token.key))
        return made

    with transaction.atomic():
        clinician_accounts = accounts(CLINICIAN_PREFIX, clinicians, CLINICIAN)
        reviewer_accounts = accounts(REVIEWER_PREFIX, reviewers, REVIEWER)
        asker_accounts = accounts(ASKER_PREFIX, askers, CLINICIAN)

    new_ids: list[int] = []
    for account in clinician_accounts:
        user = User.objects.get(username=account.username)
        have = Consultation.objects.filter(user=user).count()
        with transaction.atomic():
            for number in range(have, CONSULTATIONS_PER_CLINICIAN):
                question = QUESTIONS[number % len(QUESTIONS)]
                consultation = Consultation.objects.create(
                    user=user, question=question, status=Consultation.Status.COMPLETE,
                    routed_model_name="tiny-llama-test", routing_confidence=0.9,
                    prompt_version="answer-v1",
                    answer_text="Aspirin lowers recurrent stroke [1]. It adds some bleeding [2].")
                RetrievedPassage.objects.bulk_create(
                    RetrievedPassage(consultation=consultation, rank=rank, pmid=f"9000000{rank}",
                                     title=f"Seeded passage {rank} for the load check",
                                     text="Aspirin reduced recurrent ischemic stroke by 22% and "
                                     "increased major bleeding modestly.", score=1.0 / rank)
                    for rank in (1, 2))
                unsupported = number % UNSUPPORTED_EVERY == 0
                Claim.objects.bulk_create([
                    Claim(consultation=consultation, position=0, citations=[1],
                          text="Aspirin lowers recurrent stroke.", support_score=0.8,
                          supported=True),
                    Claim(consultation=consultation, position=1, citations=[2],
                          text="It adds some bleeding.", support_score=0.2 if unsupported
                          else 0.8, supported=not unsupported)])
                new_ids.append(consultation.pk)
        account.consultation_ids = list(
            Consultation.objects.filter(user=user).values_list("pk", flat=True))
    # One log line per queued item is the review app's business, not this bench's output.
    review_logger = logging.getLogger("review")
    level = review_logger.level
    review_logger.setLevel(logging.WARNING)
    try:
        for consultation_id in new_ids:
            enqueue_for_review(consultation_id=consultation_id)
    finally:
        review_logger.setLevel(level)

    queued = list(ReviewItem.objects.filter(
        consultation__user__username__startswith=CLINICIAN_PREFIX)
        .values_list("pk", "consultation_id"))
    for account in reviewer_accounts:
        account.review_item_ids = [item_id for item_id, _ in queued]
        account.consultation_ids = [consultation_id for _, consultation_id in queued]
    return clinician_accounts, reviewer_accounts, asker_accounts


# --- Running and reporting -----------------------------------------------------------------

def merged(stats: RequestStats, label: str, names: tuple[str, ...]) -> StatsEntry:
    total = StatsEntry(stats, label, "", use_response_times_cache=False)
    for entry in stats.entries.values():
        if entry.name in names:
            total.extend(entry)
    return total


def row(label: str, entry: StatsEntry) -> str:
    if not entry.num_requests:
        return f"{label:<34} {0:>8} {0:>8} {'-':>8} {'-':>8} {'-':>8}"
    return (f"{label:<34} {entry.num_requests:>8} {entry.num_failures:>8} "
            + " ".join(f"{entry.get_response_time_percentile(p):>8.0f}"
                       for p in (0.5, 0.95, 0.99)))


def report(stats: RequestStats, login: StatsEntry, seconds: float, users: int) -> None:
    header = f"{'endpoint':<34} {'requests':>8} {'failures':>8} {'p50 ms':>8} {'p95 ms':>8} " \
             f"{'p99 ms':>8}"
    print(f"\n{users} users, {seconds:.0f} s measured after every user logged in\n")
    print(header)
    print("-" * len(header))
    for entry in sorted(stats.entries.values(), key=lambda e: (e.name in ASK_NAMES, e.name)):
        if entry.num_requests and entry.name != LOGIN_NAME:
            print(row(f"{entry.method} {entry.name}", entry))
    print("-" * len(header))
    pages = merged(stats, "pages", PAGE_NAMES)
    print(row("pages without the model", pages))
    print(row("asking (POST, polls, answered)", merged(stats, "asking", ASK_NAMES)))
    print(row("logins (before the measurement)", login))
    if pages.num_requests:
        p95 = pages.get_response_time_percentile(0.95)
        verdict = "met" if p95 <= 200 and not pages.num_failures else "NOT met"
        print(f"\npages without the model: p95 {p95:.0f} ms, {pages.num_failures} failure(s), "
              f"{pages.num_requests / seconds:.1f} requests/s; target p95 <= 200 ms and no "
              f"failure: {verdict}")
    if stats.errors:
        print("\nfailures:")
        for error in sorted(stats.errors.values(), key=lambda e: -e.occurrences):
            print(f"  {error.occurrences:>6} x {error.method} {error.name}: {error.error}")


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"the running server (default {DEFAULT_HOST}, ./run's address)")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--spawn-rate", type=float, default=5.0, help="users started per second")
    parser.add_argument("--duration", type=float, default=120.0,
                        help="seconds measured after every user has logged in")
    parser.add_argument("--reviewers", type=int, default=10, help="of --users")
    parser.add_argument("--askers", type=int, default=5, help="of --users, asking questions")
    args = parser.parse_args(argv)
    clinicians = args.users - args.reviewers - args.askers
    if clinicians < 1:
        parser.error("--users must exceed --reviewers plus --askers")

    print(f"seeding accounts and consultations (load average {load_average()})", flush=True)
    clinician_accounts, reviewer_accounts, asker_accounts = seed(
        clinicians=clinicians, reviewers=args.reviewers, askers=args.askers)
    ClinicianUser.accounts = clinician_accounts
    AskingClinician.accounts = asker_accounts
    ReviewerUser.accounts = reviewer_accounts
    ReviewerUser.fixed_count = args.reviewers
    AskingClinician.fixed_count = args.askers
    if reviewer_accounts and not reviewer_accounts[0].review_item_ids:
        print("no review items were queued for the bench accounts; the reviewers will fail",
              flush=True)

    # A fixed_count of 0 would make Locust share users out by weight instead: leave such a
    # class out.
    user_classes: list[type[User]] = [user_class for user_class in USER_CLASSES
                    if user_class is ClinicianUser or user_class.fixed_count]
    environment = Environment(user_classes=user_classes, host=args.host, events=events)
    runner = environment.create_local_runner()
    login = StatsEntry(environment.stats, LOGIN_NAME, "", use_response_times_cache=False)
    measuring: dict[str, float] = {}

    def spawned(user_count: int, **kwargs: Any) -> None:
        gevent.spawn(measure_when_logged_in, user_count)

    def measure_when_logged_in(user_count: int) -> None:
        # Logins hash a password on purpose (slow); they are reported apart from the pages.
        deadline = time.monotonic() + 300
        while BenchUser.logged_in < user_count and time.monotonic() < deadline:
            gevent.sleep(0.1)
        for entry in environment.stats.entries.values():
            if entry.name == LOGIN_NAME:
                login.extend(entry)
        environment.stats.reset_all()
        measuring["start"] = time.monotonic()
        print(f"{BenchUser.logged_in} users through the login; measuring for "
              f"{args.duration:.0f} s (load average {load_average()})", flush=True)
        gevent.spawn_later(args.duration, runner.quit)

    environment.events.spawning_complete.add_listener(spawned)
    print(f"starting {args.users} users ({clinicians} browsing clinicians, {args.reviewers} "
          f"reviewers, {args.askers} asking) against {args.host}", flush=True)
    runner.start(args.users, spawn_rate=args.spawn_rate)
    runner.greenlet.join()
    seconds = time.monotonic() - measuring.get("start", time.monotonic())
    report(environment.stats, login, seconds, args.users)
    print(f"\nload average at the end: {load_average()} ({os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
