"""A served model with evaluation runs or promotion decisions cannot be deleted (PROTECT):
deleting it used to take its promotion history with it (CASCADE) or blank its runs' link
(SET_NULL). on_delete lives in Django only, so no table changes."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('evaluation', '0002_evalrun_suite_claims'),
        ('modelsvc', '0005_served_model_with_calls_is_protected'),
    ]

    operations = [
        migrations.AlterField(
            model_name='evalrun',
            name='served_model',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='eval_runs', to='modelsvc.servedmodel'),
        ),
        migrations.AlterField(
            model_name='promotiondecision',
            name='compared_with',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='modelsvc.servedmodel'),
        ),
        migrations.AlterField(
            model_name='promotiondecision',
            name='served_model',
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='promotion_decisions', to='modelsvc.servedmodel'),
        ),
    ]
