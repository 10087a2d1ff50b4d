"""`manage.py flush` that empties write-once tables on SQLite as it does on PostgreSQL.

A flush removes every row of every table. PostgreSQL does it with TRUNCATE, which row triggers
never see; SQLite deletes row by row, and the triggers that keep review decisions and PHI
clearances write-once (clinic 0007, review 0003) refuse. So on SQLite the triggers are set aside
inside the flush's own transaction and created again before it commits: no other connection
ever sees a table unguarded. Django's TransactionTestCase (pytest-django's `transactional_db`,
live servers) empties the test database through this command after each test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.core.management.commands import flush
from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper


@contextmanager
def sqlite_triggers_set_aside(connection: BaseDatabaseWrapper) -> Iterator[None]:
    """Every trigger dropped, then created again from its own SQL, all in one transaction."""
    with transaction.atomic(using=connection.alias):
        with connection.cursor() as cursor:
            cursor.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
            triggers = cursor.fetchall()
            for name, _ in triggers:
                cursor.execute(f"DROP TRIGGER {connection.ops.quote_name(name)}")
        yield
        with connection.cursor() as cursor:
            for _, sql in triggers:
                cursor.execute(sql)


class Command(flush.Command):
    def handle(self, **options: Any) -> None:
        connection = connections[options["database"]]
        if connection.vendor != "sqlite":
            super().handle(**options)
            return
        if options["interactive"]:
            # Asked before the transaction starts, so no lock is held while waiting for an answer.
            answer = input(
                "You have requested a flush of the database.\n"
                f'This will IRREVERSIBLY DESTROY all data currently in the '
                f'"{connection.settings_dict["NAME"]}" database,\n'
                "and return each table to an empty state.\n"
                "Are you sure you want to do this?\n\n"
                "    Type 'yes' to continue, or 'no' to cancel: ")
            if answer != "yes":
                self.stdout.write("Flush cancelled.")
                return
        with sqlite_triggers_set_aside(connection):
            super().handle(**{**options, "interactive": False})
