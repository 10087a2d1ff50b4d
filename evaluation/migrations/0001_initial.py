"""The evaluation app takes over the evaluation models from `clinic`; the tables already exist."""

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
        ('modelsvc', '0003_modelcall_consultation_by_id'),
        ('review', '0001_initial'),
        ('contenttypes', '0002_remove_content_type_name'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    state_operations = [
        migrations.CreateModel(
            name='EvalRun',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('suite', models.CharField(choices=[('pubmedqa', 'PubMedQA* (question only, retrieval required)'), ('mirage', 'MIRAGE exam questions, with and without retrieval'), ('reviewed', 'Reviewed answers held out by the export split'), ('router', 'Routing accuracy on labelled questions')], db_index=True, max_length=16)),
                ('status', models.CharField(choices=[('pending', 'Waiting to start'), ('running', 'Running'), ('complete', 'Complete'), ('failed', 'Failed'), ('cancelled', 'Cancelled')], db_index=True, default='pending', max_length=12)),
                ('error_message', models.TextField(blank=True)),
                ('model_name', models.CharField(max_length=200)),
                ('adapter_path', models.CharField(blank=True, max_length=400)),
                ('base_model', models.CharField(blank=True, max_length=200)),
                ('server_model', models.CharField(blank=True, help_text='The model name the server reported answering.', max_length=200)),
                ('index_version', models.CharField(blank=True, max_length=64)),
                ('embedding_model', models.CharField(blank=True, max_length=200)),
                ('reranker', models.CharField(blank=True, max_length=200)),
                ('prompt_version', models.CharField(blank=True, max_length=64)),
                ('router_version', models.CharField(blank=True, max_length=64)),
                ('git_commit', models.CharField(blank=True, max_length=64)),
                ('data_path', models.TextField(blank=True)),
                ('data_sha256', models.CharField(blank=True, max_length=64)),
                ('limit', models.PositiveIntegerField(blank=True, null=True)),
                ('options', models.JSONField(blank=True, default=dict)),
                ('total', models.PositiveIntegerField(default=0, help_text='Questions x conditions to answer.')),
                ('done', models.PositiveIntegerField(default=0)),
                ('metrics', models.JSONField(blank=True, default=dict)),
                ('created_at', models.DateTimeField(auto_now_add=True, db_index=True)),
                ('updated_at', models.DateTimeField(auto_now=True)),
                ('started_at', models.DateTimeField(blank=True, null=True)),
                ('finished_at', models.DateTimeField(blank=True, null=True)),
                ('wall_seconds', models.FloatField(blank=True, null=True)),
                ('claimed_by', models.CharField(blank=True, max_length=200)),
                ('cancel_requested', models.BooleanField(default=False)),
                ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='eval_runs', to=settings.AUTH_USER_MODEL)),
                ('served_model', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='eval_runs', to='modelsvc.servedmodel')),
            ],
            options={
                'db_table': 'clinic_evalrun',
                'ordering': ['-created_at', '-id'],
            },
        ),
        migrations.CreateModel(
            name='EvalResult',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('item_id', models.CharField(max_length=64)),
                ('condition', models.CharField(default='retrieval', max_length=16)),
                ('subset', models.CharField(blank=True, max_length=32)),
                ('question', models.TextField()),
                ('options', models.JSONField(blank=True, default=dict)),
                ('gold', models.TextField(blank=True)),
                ('predicted', models.TextField(blank=True)),
                ('outcome', models.CharField(choices=[('correct', 'Correct'), ('wrong', 'Wrong'), ('unparseable', 'Unparseable answer'), ('error', 'Model or retrieval error')], max_length=12)),
                ('score', models.FloatField(blank=True, help_text='Graded agreement (reviewed suite), 0..1.', null=True)),
                ('gold_pmids', models.JSONField(blank=True, default=list)),
                ('retrieved_pmids', models.JSONField(blank=True, default=list)),
                ('gold_rank', models.PositiveSmallIntegerField(blank=True, null=True)),
                ('gold_cited', models.BooleanField(null=True)),
                ('passages', models.JSONField(blank=True, default=list)),
                ('answer_text', models.TextField(blank=True)),
                ('claims', models.JSONField(blank=True, default=list)),
                ('cited_passages', models.PositiveIntegerField(default=0)),
                ('supporting_citations', models.PositiveIntegerField(default=0)),
                ('support_rate', models.FloatField(blank=True, null=True)),
                ('abstained', models.BooleanField(default=False)),
                ('prompt_tokens', models.PositiveIntegerField(default=0)),
                ('completion_tokens', models.PositiveIntegerField(default=0)),
                ('cost', models.DecimalField(decimal_places=6, default=0, max_digits=12)),
                ('latency_ms', models.PositiveIntegerField(default=0)),
                ('error', models.TextField(blank=True)),
                ('extra', models.JSONField(blank=True, default=dict)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('run', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='results', to='evaluation.evalrun')),
            ],
            options={
                'db_table': 'clinic_evalresult',
                'ordering': ['run', 'id'],
            },
        ),
        migrations.CreateModel(
            name='PromotionDecision',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('gate_passed', models.BooleanField()),
                ('promoted', models.BooleanField()),
                ('overridden', models.BooleanField(default=False)),
                ('override_reason', models.TextField(blank=True)),
                ('reasons', models.JSONField(blank=True, default=list)),
                ('comparisons', models.JSONField(blank=True, default=list)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('compared_with', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='modelsvc.servedmodel')),
                ('decided_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                ('served_model', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='promotion_decisions', to='modelsvc.servedmodel')),
            ],
            options={
                'db_table': 'clinic_promotiondecision',
                'ordering': ['-created_at', '-id'],
            },
        ),
        migrations.AddIndex(
            model_name='evalrun',
            index=models.Index(fields=['suite', 'status', '-created_at'], name='clinic_eval_suite_65a8e1_idx'),
        ),
        migrations.AddConstraint(
            model_name='evalresult',
            constraint=models.UniqueConstraint(fields=('run', 'item_id', 'condition'), name='unique_eval_result'),
        ),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=state_operations),
        move_content_types("evaluation", ["evalrun", "evalresult", "promotiondecision"]),
    ]
