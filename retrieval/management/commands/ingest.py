"""python manage.py ingest PATH... [--format pubmed-xml|jsonl|pubmedqa] [--collection NAME]
[--topics demo|TERMS] [--limit N]"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from retrieval.models import IngestFile, IngestRun
from retrieval.parsers import FORMATS
from retrieval.services import IngestError, Selection, ingest_paths


class Command(BaseCommand):
    help = "Ingest PubMed XML (.xml/.xml.gz), JSON Lines or PubMedQA files and rebuild the index."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", type=Path)
        parser.add_argument("--format", dest="fmt", choices=FORMATS,
                            help="Input format; guessed from each file name when absent.")
        parser.add_argument("--collection", default="pubmed")
        parser.add_argument("--celery", dest="celery", action="store_true", default=None,
                            help="One Celery task per file (default when several files).")
        parser.add_argument("--in-process", dest="celery", action="store_false",
                            help="Ingest here, file after file, even with several files.")
        parser.add_argument("--no-wait", action="store_true",
                            help="With Celery: queue the files and return at once.")
        parser.add_argument("--no-progress", action="store_true")
        parser.add_argument("--topics", default=None,
                            help="Ingest only records whose title or MeSH headings name a topic: "
                            "`demo` (common clinical topics) or comma-separated terms. The file "
                            "stays due for a full ingest later.")
        parser.add_argument("--limit", type=int, default=None,
                            help="At most this many records per file (spread over the topics).")

    def handle(self, *args: Any, **options: Any) -> None:
        paths: list[Path] = options["paths"]
        try:
            selection = Selection.parse(options["topics"], options["limit"])
        except IngestError as error:
            raise CommandError(str(error)) from error
        use_celery = options["celery"] if options["celery"] is not None else (
            len(paths) > 1 and selection is None)
        show = not options["no_progress"]
        bar = tqdm(total=sum(p.stat().st_size for p in paths if p.is_file()), unit="B",
                   unit_scale=True, desc="ingest", disable=not show, file=self.stderr._out)
        seen: dict[int, int] = {}

        def progress(ingest_file: IngestFile) -> None:
            bar.update(ingest_file.bytes_done - seen.get(ingest_file.pk, 0))
            seen[ingest_file.pk] = ingest_file.bytes_done
            bar.set_postfix(read=ingest_file.articles_read, skipped=ingest_file.skipped)

        try:
            run = ingest_paths(paths, fmt=options["fmt"], collection=options["collection"],
                               use_celery=use_celery, progress=progress, selection=selection)
        except IngestError as error:
            raise CommandError(str(error)) from error
        if use_celery and not options["no_wait"]:
            self.stdout.write(f"queued {len(paths)} file(s) as Celery tasks (run {run.pk}); "
                              "waiting for the workers (Ctrl-C leaves them running)")
            while run.status not in (IngestRun.Status.COMPLETE, IngestRun.Status.FAILED):
                time.sleep(1)
                for ingest_file in run.files.all():
                    progress(ingest_file)
                run.refresh_from_db()
        bar.close()
        for ingest_file in run.files.all():
            issues = ", ".join(f"{reason}: {count}" for reason, count in ingest_file.issues.items())
            self.stdout.write(
                f"{Path(ingest_file.path).name}: {ingest_file.status}; "
                f"{ingest_file.articles_read} read, {ingest_file.created} new, "
                f"{ingest_file.updated} updated, {ingest_file.unchanged} unchanged, "
                f"{ingest_file.deleted} deleted, {ingest_file.skipped} skipped, "
                f"{ingest_file.chunks_embedded} chunks embedded"
                + (f" [{issues}]" if issues else "")
                + (f" ERROR: {ingest_file.error}" if ingest_file.error else ""))
        self.stdout.write(str(run))
        if run.status == IngestRun.Status.FAILED or run.error:
            raise CommandError(run.error or "ingest failed")
