"""python manage.py build_claims --source pubmedqa|medline --out FILE.jsonl"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from evaluation.claims import SOURCES, build_medline_claims, build_pubmedqa_claims
from evaluation.suites import EvalError
from modelsvc.claim_changes import write_claims_file
from modelsvc.verifier_training import SPLIT_RULE, VerifierTrainingError, counts


class Command(BaseCommand):
    help = ("Build a claims benchmark file (JSON Lines of claim, passage, label, kind) from "
            "PubMedQA's expert set or from MEDLINE articles the verifier never trains on; "
            "score it with `manage.py evaluate --suite claims --data FILE`.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--source", choices=SOURCES, required=True,
                            help="pubmedqa: pqal_dev.json conclusions against their contexts; "
                            "medline: held-out-split MEDLINE abstracts (" + SPLIT_RULE + ").")
        parser.add_argument("--out", type=Path, required=True, help="The .jsonl file to write.")
        parser.add_argument("--data", type=Path, default=None,
                            help="pubmedqa: the PubMedQA JSON file (default LITERATURE_DATA_DIR/"
                            "pubmedqa/pqal_dev.json); medline: the folder holding pubmed/ "
                            "(default LITERATURE_DATA_DIR).")
        parser.add_argument("--limit", type=int, default=500,
                            help="medline: at most this many held-out articles (default 500).")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args: Any, **options: Any) -> None:
        data_dir = Path(settings.LITERATURE_DATA_DIR)
        try:
            if options["source"] == "pubmedqa":
                pairs = build_pubmedqa_claims(
                    options["data"] or data_dir / "pubmedqa" / "pqal_dev.json",
                    seed=options["seed"])
            else:
                pairs = build_medline_claims(options["data"] or data_dir,
                                             limit=options["limit"], seed=options["seed"])
        except (EvalError, VerifierTrainingError) as error:
            raise CommandError(str(error)) from error
        if not pairs:
            raise CommandError("No pairs could be built from that data.")
        write_claims_file(pairs, options["out"])
        made = counts(pairs)
        self.stdout.write(f"{len(pairs)} pairs written to {options['out']}: "
                          f"{json.dumps(made['labels'])}; kinds {json.dumps(made['kinds'])}")
