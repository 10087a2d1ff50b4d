"""python manage.py rollback_model --capability CAPABILITY [--to VERSION] --reason "..." """

from __future__ import annotations

import getpass
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from evaluation.services import RollbackRefused, capability_rollback
from modelsvc.models import ServedModel


class Command(BaseCommand):
    help = ("Serve an earlier version of a capability again (by default the one that served "
            "before the current one); the serving version is retired and the rollback recorded "
            "with its reason, as on /evaluation/models/.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--capability", required=True,
                            help=f"One of {', '.join(ServedModel.Capability.values)}.")
        parser.add_argument("--to", metavar="VERSION",
                            help="The retired version (ServedModel.name) to serve again; "
                            "default: the one that served before the current one.")
        parser.add_argument("--reason", required=True, help="Why; recorded with the decision.")
        parser.add_argument("--by", metavar="USERNAME",
                            help="The person rolling back, recorded as the decision's author.")

    def handle(self, *args: Any, **options: Any) -> None:
        user = None
        if options["by"]:
            user = get_user_model().objects.filter(username=options["by"]).first()
            if user is None:
                raise CommandError(f"There is no user {options['by']!r}; pass an existing "
                                   "username to --by, or leave it out.")
        try:
            decision = capability_rollback(
                capability=options["capability"], to=options["to"], reason=options["reason"],
                user=user, source=f"rollback_model command, OS user {_os_user()}")
        except RollbackRefused as refused:
            raise CommandError(refused.message) from refused
        replaced = decision.compared_with.name if decision.compared_with else "no model"
        self.stdout.write(f"{options['capability']}: {decision.served_model.name} serves again "
                          f"in place of {replaced} (decision {decision.pk}).")


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid, e.g. in a container
        return "unknown"
