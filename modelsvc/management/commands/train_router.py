from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from modelsvc.router_training import DEFAULT_THRESHOLD, RouterTrainingError, train_router


class Command(BaseCommand):
    help = ("Train the question router (literature vs knowledge) on PubMedQA and exam "
            "questions, report held-out accuracy, and make it the active router.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--limit", type=int, default=None,
                            help="At most this many questions per class (default: all 500).")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--test-fraction", type=float, default=0.25)
        parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                            help="Confidence below which questions take the literature path.")
        parser.add_argument("--data-dir", default=None,
                            help="Folder with pubmedqa/ and exam/ (default LITERATURE_DATA_DIR).")
        parser.add_argument("--no-activate", action="store_true",
                            help="Store the router without making it the active one.")

    def handle(self, *args: Any, **options: Any) -> None:
        data_dir = Path(options["data_dir"] or settings.LITERATURE_DATA_DIR)
        if options["limit"] is not None and options["limit"] < 4:
            raise CommandError("--limit must be at least 4 questions per class.")
        try:
            row = train_router(data_dir=data_dir, limit=options["limit"], seed=options["seed"],
                               test_fraction=options["test_fraction"],
                               threshold=options["threshold"],
                               activate=not options["no_activate"])
        except RouterTrainingError as error:
            raise CommandError(str(error)) from error
        metrics = row.metrics
        self.stdout.write(f"router {row.version}: {row.train_size} train / {row.test_size} "
                          "held-out questions")
        self.stdout.write(f"held-out accuracy: {row.accuracy:.3f}")
        confident_accuracy = metrics["accuracy_when_confident"]
        self.stdout.write(f"confident (>= {row.confidence_threshold:.2f}): "
                          f"{metrics['confident_share']:.1%} of questions, accuracy "
                          + (f"{confident_accuracy:.3f}" if confident_accuracy is not None
                             else "n/a"))
        self.stdout.write(f"accuracy with fallback to literature: "
                          f"{metrics['accuracy_with_fallback']:.3f}")
        self.stdout.write("per class: " + json.dumps(metrics["per_class"]))
        self.stdout.write(f"saved to {row.path}" + (" (active)" if row.active else ""))
