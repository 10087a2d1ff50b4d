"""The review app takes over the review models from `clinic`; the tables already exist."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def move_content_types(app_label, model_names):
    """Admin history and permissions follow the models to their new app."""

    def forward(apps, schema_editor):
        content_type = apps.get_model("contenttypes", "ContentType")
        content_type.objects.filter(app_label="clinic", model__in=model_names).update(
            app_label=app_label)

    def backward(apps, schema_editor):
        content_type = apps.get_model("contenttypes", "ContentType")
        content_type.objects.filter(app_label=app_label, model__in=model_names).update(
            app_label="clinic")

    return migrations.RunPython(forward, backward)


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('clinic', '0008_review_and_evaluation_become_apps'),
        ('contenttypes', '0002_remove_content_type_name'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    state_operations = [
        migrations.CreateModel(
            name='ExportBatch',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('format', models.CharField(choices=[('sft', 'Supervised fine-tuning (chat messages)'), ('dpo', 'Preference pairs (DPO)'), ('eval', 'Held-back benchmark')], max_length=4)),
                ('since', models.DateField(blank=True, null=True)),
                ('min_reviews', models.PositiveSmallIntegerField(default=1)),
                ('status', models.CharField(choices=[('pending', 'Waiting'), ('running', 'Running'), ('done', 'Done'), ('failed', 'Failed')], default='pending', max_length=8)),
                ('progress', models.PositiveSmallIntegerField(default=0)),
                ('out_dir', models.CharField(blank=True, max_length=500)),
                ('file_name', models.CharField(blank=True, max_length=200)),
                ('sha256', models.CharField(blank=True, max_length=64)),
                ('counts', models.JSONField(blank=True, default=dict)),
                ('error_message', models.TextField(blank=True)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('finished_at', models.DateTimeField(blank=True, null=True)),
                ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'verbose_name_plural': 'export batches',
                'db_table': 'clinic_exportbatch',
                'ordering': ['-created_at', '-id'],
            },
        ),
        migrations.CreateModel(
            name='ReviewItem',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('reason_codes', models.CharField(default='|', max_length=200)),
                ('priority', models.PositiveSmallIntegerField(db_index=True)),
                ('status', models.CharField(choices=[('pending', 'Waiting for a reviewer'), ('adjudication', 'Reviewers disagree: waiting for an admin'), ('escalated', 'Escalated to an admin'), ('done', 'Reviewed')], db_index=True, default='pending', max_length=12)),
                ('required_reviews', models.PositiveSmallIntegerField(default=1)),
                ('round', models.PositiveSmallIntegerField(default=1)),
                ('model_name', models.CharField(blank=True, db_index=True, max_length=200)),
                ('specialty', models.CharField(blank=True, db_index=True, max_length=40)),
                ('created_at', models.DateTimeField(auto_now_add=True, db_index=True)),
                ('updated_at', models.DateTimeField(auto_now=True)),
                ('claim_expires_at', models.DateTimeField(blank=True, null=True)),
                ('outcome', models.CharField(blank=True, choices=[('approve', 'Approved as is'), ('correct', 'Corrected'), ('reject', 'Rejected')], max_length=8)),
                ('final_answer_text', models.TextField(blank=True)),
                ('final_claims', models.JSONField(blank=True, default=list)),
                ('error_categories', models.JSONField(blank=True, default=list)),
                ('resolved_at', models.DateTimeField(blank=True, db_index=True, null=True)),
                ('phi_status', models.CharField(choices=[('unchecked', 'Not checked'), ('clear', 'De-identified'), ('held', 'Held: the PHI gate was unsure'), ('released', 'Released by an admin after a PHI check'), ('excluded', 'Kept out of exports by an admin (PHI)')], default='unchecked', max_length=10)),
                ('phi_findings', models.JSONField(blank=True, default=list)),
                ('claimed_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                ('consultation', models.OneToOneField(on_delete=django.db.models.deletion.PROTECT, related_name='review_item', to='clinic.consultation')),
            ],
            options={
                'db_table': 'clinic_reviewitem',
                'ordering': ['priority', 'created_at', 'id'],
            },
        ),
        migrations.CreateModel(
            name='ReviewDecision',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('kind', models.CharField(choices=[('approve', 'Approve as is'), ('correct', 'Correct'), ('reject', 'Reject'), ('escalate', 'Escalate to an admin')], max_length=8)),
                ('round', models.PositiveSmallIntegerField(default=1)),
                ('is_adjudication', models.BooleanField(default=False)),
                ('error_categories', models.JSONField(blank=True, default=list)),
                ('note', models.TextField(blank=True)),
                ('specialty', models.CharField(blank=True, max_length=40)),
                ('before', models.JSONField(default=dict)),
                ('after', models.JSONField(default=dict)),
                ('created_at', models.DateTimeField(auto_now_add=True, db_index=True)),
                ('reviewer', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='review_decisions', to=settings.AUTH_USER_MODEL)),
                ('item', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='decisions', to='review.reviewitem')),
            ],
            options={
                'db_table': 'clinic_reviewdecision',
                'ordering': ['created_at', 'id'],
            },
        ),
        migrations.CreateModel(
            name='PhiClearance',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('decision', models.CharField(choices=[('release', 'Release the de-identified text for export'), ('exclude', 'Keep out of every export')], max_length=8)),
                ('source_sha256', models.CharField(max_length=64)),
                ('unsure', models.JSONField(default=list)),
                ('texts', models.JSONField(blank=True, default=dict)),
                ('note', models.TextField(blank=True)),
                ('created_at', models.DateTimeField(auto_now_add=True, db_index=True)),
                ('decided_by', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to=settings.AUTH_USER_MODEL)),
                ('item', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='phi_clearances', to='review.reviewitem')),
            ],
            options={
                'db_table': 'clinic_phiclearance',
                'ordering': ['created_at', 'id'],
            },
        ),
        migrations.AddIndex(
            model_name='reviewitem',
            index=models.Index(fields=['status', 'priority', 'created_at'], name='clinic_revi_status_2fd571_idx'),
        ),
        migrations.AddConstraint(
            model_name='reviewdecision',
            constraint=models.UniqueConstraint(condition=models.Q(('is_adjudication', False)), fields=('item', 'reviewer', 'round'), name='one_review_per_reviewer_per_item'),
        ),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=state_operations),
        move_content_types("review", ["reviewitem", "reviewdecision", "phiclearance",
                                      "exportbatch"]),
    ]
