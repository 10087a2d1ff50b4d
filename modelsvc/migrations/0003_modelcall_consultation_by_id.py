"""A model call names its consultation by id: the model boundary imports nothing above it.

The column (`consultation_id`) and its index stay; only the foreign-key constraint to the
clinic's table goes, so a call's cost is kept when its consultation is deleted.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('modelsvc', '0002_call_outcome_and_router_version'),
        ('clinic', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.AlterField(
                    model_name='modelcall',
                    name='consultation',
                    field=models.ForeignKey(
                        blank=True, null=True, db_constraint=False,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name='model_calls', to='clinic.consultation'),
                ),
            ],
            state_operations=[
                migrations.RemoveField(model_name='modelcall', name='consultation'),
                migrations.AddField(
                    model_name='modelcall',
                    name='consultation_id',
                    field=models.BigIntegerField(blank=True, db_index=True, null=True),
                ),
            ],
        ),
    ]
