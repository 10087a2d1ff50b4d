"""The three roles people have: clinicians ask, reviewers review, admins run the place."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

CLINICIAN = "clinician"
REVIEWER = "reviewer"
ADMIN = "admin"
ROLES = (CLINICIAN, REVIEWER, ADMIN)


def has_role(user: AbstractBaseUser | AnonymousUser, role: str) -> bool:
    if not user.is_authenticated:
        return False
    if getattr(user, "is_superuser", False):
        return True
    return user.groups.filter(name=role).exists()  # type: ignore[attr-defined]


def is_reviewer(user: AbstractBaseUser | AnonymousUser) -> bool:
    return has_role(user, REVIEWER) or has_role(user, ADMIN)


def is_admin(user: AbstractBaseUser | AnonymousUser) -> bool:
    return has_role(user, ADMIN)
