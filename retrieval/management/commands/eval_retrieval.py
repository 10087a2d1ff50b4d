"""python manage.py eval_retrieval --suite pubmedqa --data PATH [--limit N] [--json]"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from retrieval.evaluation import METRICS, SUITES, evaluate
from retrieval.search import MODES, RetrievalError


class Command(BaseCommand):
    help = ("Score the current index on a question suite (Recall@1/5/10, MRR@10, nDCG@10, "
            "latency) for every search mode; ingests nothing.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--suite", choices=SUITES, default="pubmedqa")
        parser.add_argument("--data", type=Path,
                            default=Path(settings.LITERATURE_DATA_DIR) / "pubmedqa" /
                            "pqal_dev.json")
        parser.add_argument("--limit", type=int)
        parser.add_argument("--mode", action="append", choices=MODES,
                            help="Evaluate only these modes (repeatable); default all.")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        bars: dict[str, tqdm] = {}

        def progress(mode: str, done: int, total: int) -> None:
            if options["json"]:
                return
            if mode not in bars:
                for bar in bars.values():
                    bar.close()
                bars[mode] = tqdm(total=total, desc=mode, file=self.stderr._out)
            bars[mode].update(done - bars[mode].n)

        try:
            run = evaluate(options["suite"], options["data"], limit=options["limit"],
                           modes=tuple(options["mode"] or MODES), progress=progress)
        except RetrievalError as error:
            raise CommandError(str(error)) from error
        for bar in bars.values():
            bar.close()
        if options["json"]:
            self.stdout.write(json.dumps({
                "eval_run": run.pk, "suite": run.suite, "questions": run.questions,
                "skipped_not_indexed": run.skipped_not_indexed,
                "index_version": run.index_version, "embedding_model": run.embedding_model,
                "reranker": run.reranker, "results": run.results}, indent=2))
            return
        self.stdout.write(f"{run.suite}: {run.questions} questions on index {run.index_version}"
                          f" ({run.skipped_not_indexed} skipped: article not indexed); "
                          f"reranker {run.reranker}; stored as eval run {run.pk}")
        columns = [*METRICS, "latency_ms_p50", "latency_ms_p95"]
        self.stdout.write(f"{'mode':<15}" + "".join(f"{c:>16}" for c in columns))
        for mode, scores in run.results.items():
            self.stdout.write(f"{mode:<15}" + "".join(f"{scores[c]:>16}" for c in columns))
