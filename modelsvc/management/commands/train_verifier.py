from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from modelsvc.verifier import EVIDENCE_WORDS, MAX_LENGTH
from modelsvc.verifier_training import (
    COMBINER_ARTICLES,
    TrainingOptions,
    VerifierTrainingError,
    calibrate,
    combiner_pairs_for,
    fit_combiner,
    train_verifier,
    validation_pairs_for,
)


class Command(BaseCommand):
    help = ("Train the claim verifier (supported / contradicted / not_found cross-encoder) from "
            "structured MEDLINE abstracts, from the packaged MiniLM weights; write it with its "
            "data card to VAR_DIR/verifiers/<version>/, where VERIFIER_MODEL unset finds it.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--articles", type=int, default=700,
                            help="Training-split articles to build pairs from (about 6 pairs "
                            "each; 700 train in 5-16 min on 2 shared cores).")
        parser.add_argument("--epochs", type=int, default=1)
        parser.add_argument("--batch-size", type=int, default=16)
        parser.add_argument("--learning-rate", type=float, default=1e-4)
        parser.add_argument("--max-length", type=int, default=MAX_LENGTH,
                            help="Tokens of (evidence, claim) the model reads.")
        parser.add_argument("--evidence-words", type=int, default=EVIDENCE_WORDS,
                            help="Words of the passage kept as evidence (closest sentences).")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--data-dir", default=None,
                            help="Folder with pubmed/*.xml.gz (default LITERATURE_DATA_DIR).")
        parser.add_argument("--base-model", default=None,
                            help="Model folder to start from (default: the packaged MiniLM).")
        parser.add_argument("--combiner-articles", type=int, default=COMBINER_ARTICLES,
                            help="Training-split articles, after those trained on, whose pairs "
                            "fit the combiner of the cross-encoder with the claim checks (0: "
                            "none, the cross-encoder decides alone).")
        parser.add_argument("--reversals", action="store_true",
                            help="The combiner also judges each claim said the other way round "
                            "(2-3x the cross-encoder's work per claim: over the 50 ms budget "
                            "on 2 CPU cores, for a point or two of accuracy).")
        parser.add_argument("--combine", metavar="FOLDER", default=None,
                            help="Do not train: fit the combiner of the verifier in FOLDER "
                            "again (its own seed and articles), then choose its thresholds.")
        parser.add_argument("--recalibrate", metavar="FOLDER", default=None,
                            help="Do not train: choose the decision thresholds of the verifier "
                            "in FOLDER again on its validation pairs (same --seed).")

    def _say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()  # progress of a long run, also when stdout is a file

    def handle(self, *args: Any, **options: Any) -> None:
        if options["articles"] < 10:
            raise CommandError("--articles must be at least 10.")
        data_dir = Path(options["data_dir"] or settings.LITERATURE_DATA_DIR)
        if options["recalibrate"] or options["combine"]:
            folder = Path(options["recalibrate"] or options["combine"])
            if not (folder / "data_card.json").is_file():
                raise CommandError(f"{folder} holds no verifier (no data_card.json).")
            seed = options["seed"]
            try:
                if options["combine"]:
                    card = json.loads((folder / "data_card.json").read_text())
                    seed = int(card.get("training", {}).get("seed", seed))
                    pairs = combiner_pairs_for(
                        data_dir, seed=seed, trained_articles=int(card["train"]["articles"]),
                        articles=options["combiner_articles"])
                    self._say(f"fitting the combiner on {len(pairs)} pairs not trained on")
                    fit_combiner(folder, pairs, reversals=options["reversals"],
                                 say=self._say)
                card = calibrate(folder, validation_pairs_for(data_dir, seed=seed))
            except VerifierTrainingError as error:
                raise CommandError(str(error)) from error
            self._report(folder, card)
            return
        try:
            folder = train_verifier(
                data_dir=data_dir, articles=options["articles"], progress=self._say,
                combiner_articles=options["combiner_articles"],
                combiner_reversals=options["reversals"],
                options=TrainingOptions(
                    epochs=options["epochs"], batch_size=options["batch_size"],
                    learning_rate=options["learning_rate"], max_length=options["max_length"],
                    evidence_words=options["evidence_words"], seed=options["seed"],
                    base_model=options["base_model"]))
        except VerifierTrainingError as error:
            raise CommandError(str(error)) from error
        card = json.loads((folder / "data_card.json").read_text())
        self.stdout.write(f"pairs: {json.dumps(card['train']['labels'])}; kinds: "
                          f"{json.dumps(card['train']['kinds'])}")
        self.stdout.write(f"training {card['training']['seconds']:.0f} s, in all "
                          f"{card['training']['total_seconds']:.0f} s")
        self._report(folder, card)

    def _report(self, folder: Path, card: dict[str, Any]) -> None:
        validation = card.get("validation", {})
        self.stdout.write(f"decision: {json.dumps(card.get('decision', {}))}")
        self.stdout.write(f"validation ({validation.get('pairs')} pairs of train-split articles "
                          f"not trained on), with the decision: "
                          f"{json.dumps(validation.get('with_decision'))}")
        self.stdout.write(f"saved to {folder} (used when VERIFIER_MODEL is unset)")
