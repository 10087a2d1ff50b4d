"""Ingest files get an exclusive claim (token + heartbeat) and their place in NLM's file order;
articles keep the place of the file their record came from, and deleted PMIDs a tombstone.

Existing rows are numbered from the file names already stored, so an older file ingested
after this migration does not replace a record an update file wrote before it."""

import re
from pathlib import PurePath

from django.db import migrations, models

NLM_FILE_NAME = re.compile(r"^pubmed(\d{2})n(\d{4})\.xml(?:\.gz)?$", re.IGNORECASE)


def _sequence(path):
    match = NLM_FILE_NAME.match(PurePath(path).name)
    return int(match.group(1)) * 10000 + int(match.group(2)) if match else None


def number_existing_rows(apps, schema_editor):
    Article = apps.get_model("retrieval", "Article")
    IngestFile = apps.get_model("retrieval", "IngestFile")
    for source_file in Article.objects.values_list("source_file", flat=True).distinct():
        sequence = _sequence(source_file or "")
        if sequence is not None:
            Article.objects.filter(source_file=source_file).update(source_sequence=sequence)
    for ingest_file in IngestFile.objects.only("id", "path"):
        sequence = _sequence(ingest_file.path)
        if sequence is not None:
            IngestFile.objects.filter(pk=ingest_file.pk).update(sequence=sequence)


class Migration(migrations.Migration):

    dependencies = [
        ('retrieval', '0003_article_retraction_notice_pmid'),
    ]

    operations = [
        migrations.CreateModel(
            name='ArticleTombstone',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('pmid', models.CharField(max_length=20, unique=True)),
                ('source_sequence', models.BigIntegerField()),
                ('reason', models.CharField(choices=[('deleted', 'Deleted by PubMed'), ('no abstract', 'Newest version has no abstract')], max_length=16)),
                ('source_file', models.CharField(blank=True, max_length=300)),
                ('recorded_at', models.DateTimeField(auto_now=True)),
            ],
        ),
        migrations.AddField(
            model_name='article',
            name='source_sequence',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='ingestfile',
            name='claim_token',
            field=models.CharField(blank=True, max_length=32),
        ),
        migrations.AddField(
            model_name='ingestfile',
            name='heartbeat_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='ingestfile',
            name='sequence',
            field=models.BigIntegerField(blank=True, db_index=True, null=True),
        ),
        migrations.AddField(
            model_name='ingestfile',
            name='waiting_for',
            field=models.CharField(blank=True, max_length=300),
        ),
        migrations.RunPython(number_existing_rows, migrations.RunPython.noop),
    ]
