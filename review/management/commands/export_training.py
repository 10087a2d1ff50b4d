"""export_training --format sft|dpo|eval [--since DATE] [--min-reviews N] --out DIR"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from review.exports import ExportError, build_export
from review.models import ExportBatch
from review.phi import PhiGateUnavailable


class Command(BaseCommand):
    help = ("Export reviewed answers as training data (sft, dpo) or the held-back benchmark "
            "(eval), with a manifest beside the file. Free text passes the PHI gate first.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--format", required=True, choices=ExportBatch.Format.values)
        parser.add_argument("--since", type=date.fromisoformat, default=None,
                            help="Only items resolved on or after this date (YYYY-MM-DD).")
        parser.add_argument("--min-reviews", type=int, default=1,
                            help="Only items with at least this many independent reviews.")
        parser.add_argument("--out", required=True, type=Path, help="Output folder.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["min_reviews"] < 1:
            raise CommandError("--min-reviews must be at least 1.")
        batch = ExportBatch.objects.create(format=options["format"], since=options["since"],
                                           min_reviews=options["min_reviews"],
                                           out_dir=str(options["out"].resolve()),
                                           status=ExportBatch.Status.RUNNING)
        try:
            result = build_export(fmt=options["format"], out_dir=options["out"],
                                  since=options["since"], min_reviews=options["min_reviews"])
        except (ExportError, PhiGateUnavailable) as error:
            ExportBatch.objects.filter(pk=batch.pk).update(status=ExportBatch.Status.FAILED,
                                                           error_message=str(error))
            raise CommandError(str(error)) from error
        ExportBatch.objects.filter(pk=batch.pk).update(
            status=ExportBatch.Status.DONE, progress=100, file_name=result.path.name,
            sha256=result.sha256, counts=result.counts, finished_at=timezone.now())
        counts = ", ".join(f"{name} {value}" for name, value in sorted(result.counts.items()))
        self.stdout.write(f"Export {batch.pk}: wrote {result.path} ({result.counts['exported']} "
                          f"records, sha256 {result.sha256[:12]}…); {counts}.")
