"""A promotion decision may now be a rollback: an admin serving an earlier version of a
capability again, with a reason. `kind` tells the two apart (existing rows are promotions);
a rollback does not ask the gate, so `gate_passed` may be empty."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('evaluation', '0003_served_model_with_history_is_protected'),
    ]

    operations = [
        migrations.AddField(
            model_name='promotiondecision',
            name='kind',
            field=models.CharField(choices=[('promotion', 'Promotion through the gate'), ('rollback', 'Rollback to an earlier version')], db_index=True, default='promotion', max_length=12),
        ),
        migrations.AlterField(
            model_name='promotiondecision',
            name='gate_passed',
            field=models.BooleanField(help_text='None when the gate was not asked (a rollback).', null=True),
        ),
        migrations.AlterField(
            model_name='promotiondecision',
            name='override_reason',
            field=models.TextField(blank=True, help_text='Why an admin overrode the gate, or rolled back.'),
        ),
    ]
