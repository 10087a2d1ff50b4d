"""Claims get a verdict and the passage it refers to; withheld answers say why; a clinician may
ask to include retracted articles, and a shown passage keeps its retraction notice's PMID.

Claims stored before verdicts existed were judged by similarity only, which can say supported or
not, never contradicted: they become supported / not_found.
"""

from django.db import migrations, models


def verdicts_from_support(apps, schema_editor):
    Claim = apps.get_model("clinic", "Claim")
    Claim.objects.filter(supported=True).update(verdict="supported")
    Claim.objects.filter(supported=False).update(verdict="not_found")


def withheld_reason_for_abstentions(apps, schema_editor):
    Consultation = apps.get_model("clinic", "Consultation")
    Consultation.objects.filter(abstained=True, answer_text="").update(withheld_reason="empty")
    Consultation.objects.filter(abstained=True, withheld_reason="",
                                error_message__contains="instructions found inside"
                                ).update(withheld_reason="injection", error_message="")
    Consultation.objects.filter(abstained=True, withheld_reason="").update(
        withheld_reason="low_support")


class Migration(migrations.Migration):

    dependencies = [
        ('clinic', '0008_review_and_evaluation_become_apps'),
    ]

    operations = [
        migrations.AddField(
            model_name='claim',
            name='passage',
            field=models.PositiveSmallIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='claim',
            name='verdict',
            field=models.CharField(blank=True, choices=[('supported', 'Supported'), ('contradicted', 'Contradicted'), ('not_found', 'Not found')], max_length=12),
        ),
        migrations.AddField(
            model_name='consultation',
            name='include_retracted',
            field=models.BooleanField(default=False),
        ),
        migrations.AddField(
            model_name='consultation',
            name='withheld_reason',
            field=models.CharField(blank=True, choices=[('low_support', 'Too few statements supported by their citations'), ('contradicted', 'A cited passage contradicts a statement'), ('injection', 'Repeated instructions found inside a passage'), ('empty', 'No answer was generated')], max_length=16),
        ),
        migrations.AddField(
            model_name='retrievedpassage',
            name='retraction_notice_pmid',
            field=models.CharField(blank=True, max_length=20),
        ),
        migrations.RunPython(verdicts_from_support, migrations.RunPython.noop),
        migrations.RunPython(withheld_reason_for_abstentions, migrations.RunPython.noop),
    ]
