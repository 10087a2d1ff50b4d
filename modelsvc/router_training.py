"""Train and evaluate the question router on a held-out split; persist file and row.

Literature questions: PubMedQA QUESTIONs (pubmedqa/pqal_dev.json). Knowledge questions:
MedMCQA + MMLU-medical exam questions (exam/mirage_medmcqa_mmlu.json), subsampled to balance.
Only the question stem is used (no options): at run time clinicians type a question.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from modelsvc.models import RouterVersion
from modelsvc.router import KNOWLEDGE, LITERATURE
from retrieval.embedding import embed_texts

logger = logging.getLogger(__name__)

PUBMEDQA_FILE = Path("pubmedqa") / "pqal_dev.json"
EXAM_FILE = Path("exam") / "mirage_medmcqa_mmlu.json"
DEFAULT_THRESHOLD = 0.8


class RouterTrainingError(Exception):
    """The data or the split cannot train a router; the message says what to do."""


def question_fingerprint(text: str) -> str:
    """A short, stable name for a question's text (whitespace and case folded), stored in the
    router's training split so evaluations can leave out what it learnt from."""
    normalized = " ".join(text.split()).casefold()
    return hashlib.sha256(normalized.encode()).hexdigest()[:16]


def training_split_of(router: RouterVersion) -> frozenset[str] | None:
    """Fingerprints of the questions `router` was trained on; None when it was trained before
    the split was kept (its evaluation cannot tell seen questions from unseen ones)."""
    train = router.training_split.get("train") if router.training_split else None
    return None if train is None else frozenset(train)


@dataclass(frozen=True)
class LabelledQuestions:
    texts: list[str]
    labels: list[str]


def load_questions(data_dir: Path, *, limit: int | None = None,
                   seed: int = 0) -> LabelledQuestions:
    """Balanced: as many knowledge questions as literature ones (at most `limit` each)."""
    try:
        pubmedqa = json.loads((data_dir / PUBMEDQA_FILE).read_text())
        exam = json.loads((data_dir / EXAM_FILE).read_text())
    except (OSError, ValueError) as error:
        raise RouterTrainingError(
            f"Cannot read the router's training data under {data_dir} ({error}); set "
            "LITERATURE_DATA_DIR to the folder holding pubmedqa/ and exam/.") from error
    rng = random.Random(seed)
    literature = sorted({item["QUESTION"].strip() for item in pubmedqa.values()
                         if item.get("QUESTION")})
    knowledge = sorted({item["question"].strip() for subset in exam.values()
                        for item in subset.values() if item.get("question")})
    rng.shuffle(literature)
    rng.shuffle(knowledge)
    per_class = min(len(literature), len(knowledge), limit or len(literature))
    texts = literature[:per_class] + knowledge[:per_class]
    labels = [LITERATURE] * per_class + [KNOWLEDGE] * per_class
    return LabelledQuestions(texts, labels)


def default_embedder() -> Callable[[list[str]], np.ndarray]:
    """retrieval's embedding function: the router sees questions as retrieval embeds them."""
    return embed_texts


def _write_aside(payload: dict[str, Any], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(target.name + f".writing-{os.getpid()}")
    joblib.dump(payload, staging)
    os.replace(staging, target)


def train_router(*, data_dir: Path, limit: int | None = None, seed: int = 0,
                 test_fraction: float = 0.25, threshold: float = DEFAULT_THRESHOLD,
                 embed: Callable[[list[str]], np.ndarray] | None = None,
                 activate: bool = True) -> RouterVersion:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
    from sklearn.model_selection import train_test_split

    questions = load_questions(data_dir, limit=limit, seed=seed)
    if len(questions.texts) < 8:
        raise RouterTrainingError("Too few questions to train and test a router; raise --limit.")
    vectors = np.asarray((embed or default_embedder())(questions.texts), dtype=np.float32)
    labels = np.asarray(questions.labels)
    # Same shuffle as splitting vectors and labels alone: one permutation for every array.
    x_train, x_test, y_train, y_test, i_train, i_test = train_test_split(
        vectors, labels, np.arange(len(labels)), test_size=test_fraction, random_state=seed,
        stratify=labels)
    trained_on = {question_fingerprint(questions.texts[i]) for i in i_train}
    training_split = {
        "seed": seed, "test_fraction": test_fraction, "fingerprint": "question_fingerprint",
        "train": sorted(trained_on),
        # A held-out question whose folded text equals a trained one was seen after all.
        "held_out": sorted({question_fingerprint(questions.texts[i]) for i in i_test}
                           - trained_on),
    }
    classifier = LogisticRegression(C=16.0, max_iter=2000, class_weight="balanced")
    classifier.fit(x_train, y_train)

    proba = classifier.predict_proba(x_test)
    predicted = classifier.classes_[proba.argmax(axis=1)]
    confident = proba.max(axis=1) >= threshold
    classes = [str(c) for c in classifier.classes_]
    precision, recall, f1, support = precision_recall_fscore_support(
        y_test, predicted, labels=classes, zero_division=0)
    # What reaches users: confident decisions as predicted, the rest on the literature path.
    served = np.where(confident, predicted, LITERATURE)
    metrics = {
        "accuracy": float(accuracy_score(y_test, predicted)),
        "per_class": {c: {"precision": float(p), "recall": float(r), "f1": float(f),
                          "support": int(s)}
                      for c, p, r, f, s in zip(classes, precision, recall, f1, support,
                                               strict=True)},
        "confusion": {"labels": classes,
                      "matrix": confusion_matrix(y_test, predicted, labels=classes).tolist()},
        "threshold": threshold,
        "confident_share": float(confident.mean()),
        "accuracy_when_confident": (float((predicted[confident] == y_test[confident]).mean())
                                    if confident.any() else None),
        "accuracy_with_fallback": float((served == y_test).mean()),
        "knowledge_sent_to_literature": float(
            ((served == LITERATURE) & (y_test == KNOWLEDGE)).sum() / max((y_test == KNOWLEDGE)
                                                                         .sum(), 1)),
        "literature_sent_to_knowledge": float(
            ((served == KNOWLEDGE) & (y_test == LITERATURE)).sum() / max((y_test == LITERATURE)
                                                                          .sum(), 1)),
        "seed": seed,
        "limit": limit,
    }
    digest = hashlib.sha256(vectors.tobytes() + repr(classifier.coef_).encode()).hexdigest()[:8]
    version = f"{timezone.now():%Y%m%d-%H%M%S}-{digest}"
    path = Path(settings.VAR_DIR) / "router" / f"router-{version}.joblib"
    _write_aside({"classifier": classifier, "classes": classes, "dim": vectors.shape[1],
                  "version": version}, path)
    with transaction.atomic():
        if activate:
            RouterVersion.objects.filter(active=True).update(active=False)
        row = RouterVersion.objects.create(
            version=version, path=str(path),
            embedding_model=settings.EMBEDDING_MODEL or "all-MiniLM-L6-v2",
            classes=classes, confidence_threshold=threshold,
            accuracy=float(metrics["accuracy"]),  # type: ignore[arg-type]
            metrics=metrics, train_size=len(y_train), test_size=len(y_test), active=activate,
            training_split=training_split)
    logger.info("trained router %s: accuracy %.3f on %d held-out questions", version,
                metrics["accuracy"], len(y_test))
    return row
