"""Review decisions and PHI clearances refuse DELETE in the database on SQLite too.

clinic 0007 made these rows write-once with triggers: on PostgreSQL one trigger refuses UPDATE
and DELETE; on SQLite it refused UPDATE only, because the test flush empties tables with DELETE
there. The flush now sets SQLite's triggers aside for its own transaction (`review`'s `flush`
command), as TRUNCATE passes them by on PostgreSQL, so SQLite gets the DELETE guard as well.

SQLite drops a table's triggers when Django rebuilds the table (most AlterField/RemoveField
operations): a later migration that rebuilds one of these tables must create them again.
"""

from django.db import migrations

TABLES = ("clinic_reviewdecision", "clinic_phiclearance")


def create_delete_guards(apps, schema_editor):
    # PostgreSQL: clinic 0007's {table}_write_once trigger already fires BEFORE UPDATE OR DELETE.
    if schema_editor.connection.vendor != "sqlite":
        return
    for table in TABLES:
        schema_editor.execute(f"""
            CREATE TRIGGER {table}_never_deleted BEFORE DELETE ON {table}
            BEGIN
                SELECT RAISE(ABORT, '{table} rows are immutable and never deleted');
            END;""")


def drop_delete_guards(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    for table in TABLES:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_never_deleted;")


class Migration(migrations.Migration):

    dependencies = [
        ('review', '0002_reviewdecision_blind'),
        ('clinic', '0009_verdicts_withheld_answers_retractions'),
    ]

    operations = [migrations.RunPython(create_delete_guards, drop_delete_guards)]
