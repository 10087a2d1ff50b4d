"""A served model that was called cannot be deleted (PROTECT): its calls keep their link for
the accounting. on_delete lives in Django only, so no table changes."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('modelsvc', '0004_routerversion_training_split'),
    ]

    operations = [
        migrations.AlterField(
            model_name='modelcall',
            name='served_model',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='calls', to='modelsvc.servedmodel'),
        ),
    ]
