"""Review decisions record whether they were made blind (without seeing another decision of
the same round). A nullable column without a default is a plain ALTER TABLE ADD COLUMN on
SQLite and PostgreSQL alike, so the write-once triggers of clinic 0007 stay on the table; rows
decided before this column existed stay NULL ("not recorded") and are left out of kappa.
"""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('review', '0001_initial'),
    ]

    operations = [
        migrations.AddField(
            model_name='reviewdecision',
            name='blind',
            field=models.BooleanField(null=True),
        ),
    ]
