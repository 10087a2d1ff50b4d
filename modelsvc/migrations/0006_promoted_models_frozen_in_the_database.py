"""A promoted (serving or retired) model cannot change what it serves in the database either.

`ServedModel.save()` and its queryset's `update()` already refuse (FROZEN_ONCE_PROMOTED); a
trigger now refuses an UPDATE that changes one of those columns of a row whose status is no
longer candidate, whoever runs it. Its status may still move on (serving -> retired), and a
candidate stays a draft. The columns are listed here as they were when this migration was
written, not imported, so the migration keeps meaning what it meant.

SQLite drops a table's triggers when Django rebuilds the table (most AlterField/RemoveField
operations): a later migration that rebuilds modelsvc_servedmodel must create it again.
"""

from django.db import migrations

TABLE = "modelsvc_servedmodel"
TRIGGER = "modelsvc_servedmodel_frozen_once_promoted"
FROZEN = ("served_name", "base_model", "adapter_path", "capability", "cost_per_1k_prompt",
          "cost_per_1k_completion")
MESSAGE = ("a promoted served model cannot change what it serves: register the change as a new "
           "model and take it through the gate")


def create_guard(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        new = ", ".join(f"NEW.{column}" for column in FROZEN)
        old = ", ".join(f"OLD.{column}" for column in FROZEN)
        schema_editor.execute(f"""
            CREATE OR REPLACE FUNCTION {TRIGGER}() RETURNS trigger AS $$
            BEGIN
                IF OLD.status <> 'candidate' AND ({new}) IS DISTINCT FROM ({old}) THEN
                    RAISE EXCEPTION USING MESSAGE =
                        '{MESSAGE} (' || OLD.name || ', ' || OLD.status || ')';
                END IF;
                RETURN NEW;
            END; $$ LANGUAGE plpgsql;""")
        schema_editor.execute(f"""
            CREATE TRIGGER {TRIGGER} BEFORE UPDATE ON {TABLE}
            FOR EACH ROW EXECUTE FUNCTION {TRIGGER}();""")
    elif vendor == "sqlite":
        changed = " OR ".join(f"NEW.{column} IS NOT OLD.{column}" for column in FROZEN)
        schema_editor.execute(f"""
            CREATE TRIGGER {TRIGGER} BEFORE UPDATE ON {TABLE}
            WHEN OLD.status <> 'candidate' AND ({changed})
            BEGIN
                SELECT RAISE(ABORT, '{MESSAGE}');
            END;""")


def drop_guard(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {TRIGGER} ON {TABLE};")
        schema_editor.execute(f"DROP FUNCTION IF EXISTS {TRIGGER}();")
    elif vendor == "sqlite":
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {TRIGGER};")


class Migration(migrations.Migration):

    dependencies = [
        ('modelsvc', '0005_served_model_with_calls_is_protected'),
    ]

    operations = [migrations.RunPython(create_guard, drop_guard)]
