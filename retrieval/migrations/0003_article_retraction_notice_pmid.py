"""Articles keep the PMID of their retraction notice (PubMed's RetractionIn link)."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('retrieval', '0002_ingestrun_retrievalevalrun_article_abstract_sections_and_more'),
    ]

    operations = [
        migrations.AddField(
            model_name='article',
            name='retraction_notice_pmid',
            field=models.CharField(blank=True, max_length=20),
        ),
    ]
