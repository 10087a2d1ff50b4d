"""Review decisions and PHI clearances are write-once in the database itself, not only in the
ORM: an UPDATE (and, on PostgreSQL, a DELETE) of a row is refused by a trigger, whoever runs it.

SQLite gets the UPDATE guard only: Django's test flush empties tables with DELETE there, while
on PostgreSQL it uses TRUNCATE, which row triggers do not see.
"""

from django.db import migrations

TABLES = ("clinic_reviewdecision", "clinic_phiclearance")


def create_guards(apps, schema_editor):
    connection = schema_editor.connection
    for table in TABLES:
        if connection.vendor == "postgresql":
            schema_editor.execute(f"""
                CREATE OR REPLACE FUNCTION {table}_write_once() RETURNS trigger AS $$
                BEGIN
                    RAISE EXCEPTION '{table} rows are immutable: record a new one instead';
                END; $$ LANGUAGE plpgsql;""")
            schema_editor.execute(f"""
                CREATE TRIGGER {table}_write_once BEFORE UPDATE OR DELETE ON {table}
                FOR EACH ROW EXECUTE FUNCTION {table}_write_once();""")
        elif connection.vendor == "sqlite":
            schema_editor.execute(f"""
                CREATE TRIGGER {table}_write_once BEFORE UPDATE ON {table}
                BEGIN
                    SELECT RAISE(ABORT, '{table} rows are immutable: record a new one instead');
                END;""")


def drop_guards(apps, schema_editor):
    connection = schema_editor.connection
    for table in TABLES:
        if connection.vendor == "postgresql":
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_write_once ON {table};")
            schema_editor.execute(f"DROP FUNCTION IF EXISTS {table}_write_once();")
        elif connection.vendor == "sqlite":
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_write_once;")


class Migration(migrations.Migration):

    dependencies = [
        ("clinic", "0006_phiclearance"),
    ]

    operations = [migrations.RunPython(create_guards, drop_guards)]
