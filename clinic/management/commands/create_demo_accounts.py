"""Create the three demo accounts once, printing their generated passwords that one time."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand
from django.db import transaction

from clinic.roles import ADMIN, CLINICIAN, REVIEWER

DEMO_ACCOUNTS = (
    ("clinician", CLINICIAN, False),
    ("reviewer", REVIEWER, False),
    ("admin", ADMIN, True),
)


class Command(BaseCommand):
    help = "Create demo clinician, reviewer and admin accounts (only those missing)."

    def handle(self, *args: Any, **options: Any) -> None:
        created: list[tuple[str, str, str]] = []
        with transaction.atomic():
            for username, role, is_admin in DEMO_ACCOUNTS:
                if User.objects.filter(username=username).exists():
                    continue
                password = secrets.token_urlsafe(12)
                user = User.objects.create_user(username=username, password=password,
                                                is_staff=is_admin, is_superuser=is_admin)
                user.groups.add(Group.objects.get(name=role))
                created.append((username, role, password))
        if not created:
            self.stdout.write("Demo accounts already exist (clinician, reviewer, admin); "
                              "their passwords were shown on the first run. Reset one with "
                              "`python manage.py changepassword NAME`.")
            return
        self.stdout.write(self.style.SUCCESS("Demo accounts created. Passwords are shown only "
                                             "this once; write them down:"))
        for username, role, password in created:
            self.stdout.write(f"  {role:<10} username: {username:<10} password: {password}")
