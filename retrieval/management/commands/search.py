"""python manage.py search "QUESTION" [-k 10] [--mode MODE] [--json]"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from retrieval.search import MODES, RetrievalError, SearchFilters, search


class Command(BaseCommand):
    help = "Search the literature index and show PMIDs, titles, scores and the finding stages."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("question")
        parser.add_argument("-k", type=int, default=10)
        parser.add_argument("--mode", choices=MODES, default="hybrid+rerank")
        parser.add_argument("--year-from", type=int)
        parser.add_argument("--year-to", type=int)
        parser.add_argument("--publication-type", action="append", default=[],
                            help="Keep articles of this type (repeatable).")
        parser.add_argument("--include-retracted", action="store_true")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        filters = SearchFilters(year_from=options["year_from"], year_to=options["year_to"],
                                publication_types=tuple(options["publication_type"]),
                                exclude_retracted=not options["include_retracted"])
        try:
            result = search(options["question"], k=options["k"], mode=options["mode"],
                            filters=filters)
        except RetrievalError as error:
            raise CommandError(str(error)) from error
        if options["json"]:
            self.stdout.write(json.dumps({
                "index_version": result.index_version, "timings_ms": result.timings_ms,
                "hits": [asdict(hit) for hit in result.hits]}, indent=2))
            return
        self.stdout.write(f"index {result.index_version}, {result.timings_ms['total']:.1f} ms")
        for rank, hit in enumerate(result.hits, start=1):
            stages = " ".join(f"{name}#{position}" for name, position in hit.stages.items())
            flag = " [RETRACTED]" if hit.retracted else ""
            self.stdout.write(f"{rank:>3}. PMID {hit.pmid} ({hit.year or '?'}) score "
                              f"{hit.score:.4f} [{stages}]{flag}\n     "
                              f"{(hit.title or hit.text)[:110]}")
