"""Routers keep their training split (question fingerprints), so the router suite scores only
questions a router never learnt from. Routers trained before have none (an empty object)."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('modelsvc', '0003_modelcall_consultation_by_id'),
    ]

    operations = [
        migrations.AddField(
            model_name='routerversion',
            name='training_split',
            field=models.JSONField(blank=True, default=dict),
        ),
    ]
