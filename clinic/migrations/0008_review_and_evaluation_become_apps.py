"""The review and evaluation models move to apps of their own; their tables stay.

Only Django's state changes here: the tables keep their names (`clinic_reviewitem`...), and
the new apps' first migrations take the models over without touching a row.
"""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('clinic', '0007_immutable_records_in_the_database'),
    ]

    state_operations = [
        migrations.RemoveField(
            model_name='evalrun',
            name='created_by',
        ),
        migrations.RemoveField(
            model_name='evalrun',
            name='served_model',
        ),
        migrations.RemoveField(
            model_name='exportbatch',
            name='created_by',
        ),
        migrations.RemoveField(
            model_name='phiclearance',
            name='decided_by',
        ),
        migrations.RemoveField(
            model_name='phiclearance',
            name='item',
        ),
        migrations.RemoveField(
            model_name='promotiondecision',
            name='compared_with',
        ),
        migrations.RemoveField(
            model_name='promotiondecision',
            name='decided_by',
        ),
        migrations.RemoveField(
            model_name='promotiondecision',
            name='served_model',
        ),
        migrations.RemoveField(
            model_name='reviewdecision',
            name='item',
        ),
        migrations.RemoveField(
            model_name='reviewdecision',
            name='reviewer',
        ),
        migrations.RemoveField(
            model_name='reviewitem',
            name='claimed_by',
        ),
        migrations.RemoveField(
            model_name='reviewitem',
            name='consultation',
        ),
        migrations.DeleteModel(
            name='EvalResult',
        ),
        migrations.DeleteModel(
            name='EvalRun',
        ),
        migrations.DeleteModel(
            name='ExportBatch',
        ),
        migrations.DeleteModel(
            name='PhiClearance',
        ),
        migrations.DeleteModel(
            name='PromotionDecision',
        ),
        migrations.DeleteModel(
            name='ReviewDecision',
        ),
        migrations.DeleteModel(
            name='ReviewItem',
        ),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=state_operations),
    ]
