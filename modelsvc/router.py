"""Pick exactly one model per question (no voting), decide retrieval and deep consult.

A logistic-regression classifier over the question embedding retrieval already computed
(all-MiniLM-L6-v2, 384-d) tells literature questions from knowledge/exam questions. Every
decision carries its confidence; below the trained router's threshold, or without a trained
router, the question takes the safer path: literature capability with retrieval.
No torch here: the classifier is scikit-learn and the embedding comes from the caller.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from django.conf import settings

from modelsvc.models import RouterVersion, ServedModel

logger = logging.getLogger(__name__)

LITERATURE = ServedModel.Capability.LITERATURE.value
KNOWLEDGE = ServedModel.Capability.KNOWLEDGE.value

# Signals that a question needs several retrieval rounds (compare, weigh, plan).
_DEEP_SIGNALS = re.compile(
    r"\b(?:compare|comparison|versus|vs\.?|differential|trade-?offs?|pros and cons|"
    r"risks? and benefits?|step[- ]by[- ]step|management plan|treatment plan|which is (?:better|"
    r"safer)|systematic|all (?:the )?(?:evidence|options)|long-term outcomes?)\b",
    re.IGNORECASE)
DEEP_MIN_WORDS = 60
DEEP_THRESHOLD = 0.5


@dataclass(frozen=True)
class RoutingDecision:
    capability: str
    served_model: ServedModel | None
    model_name: str
    confidence: float
    use_retrieval: bool
    deep: bool
    fallback: bool
    reason: str
    deep_confidence: float = 0.0
    router_version: str = ""
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainedRouter:
    classifier: Any
    classes: list[str]
    dim: int
    version: str

    def probabilities(self, embedding: np.ndarray) -> dict[str, float]:
        vector = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
        proba = self.classifier.predict_proba(vector)[0]
        return {str(label): float(p) for label, p in
                zip(self.classifier.classes_, proba, strict=True)}


@lru_cache(maxsize=2)
def _load_file(path: str, mtime: float) -> dict[str, Any]:
    payload: dict[str, Any] = joblib.load(path)
    return payload


def load_router(row: RouterVersion) -> TrainedRouter:
    path = Path(row.path)
    payload = _load_file(str(path), path.stat().st_mtime)
    return TrainedRouter(payload["classifier"], list(payload["classes"]), int(payload["dim"]),
                         row.version)


def deep_score(question: str) -> tuple[float, str]:
    words = len(question.split())
    signals = {m.group(0).lower() for m in _DEEP_SIGNALS.finditer(question)}
    score = 0.0
    reasons = []
    if signals:
        score += 0.35 + 0.15 * min(len(signals), 3)
        reasons.append("asks to " + ", ".join(sorted(signals)))
    if words >= DEEP_MIN_WORDS:
        score += 0.3
        reasons.append(f"{words} words long")
    if question.count("?") >= 2:
        score += 0.25
        reasons.append("several questions in one")
    return min(score, 1.0), "; ".join(reasons)


def serving_model_for(capability: str) -> ServedModel | None:
    return (ServedModel.objects.filter(capability=capability, status=ServedModel.Status.SERVING)
            .order_by("-updated_at").first())


def _decision(capability: str, *, confidence: float, use_retrieval: bool, fallback: bool,
              reason: str, question: str, version: str = "",
              scores: dict[str, float] | None = None) -> RoutingDecision:
    served_model = serving_model_for(capability)
    model_name = served_model.served_name if served_model else settings.MODEL_NAME
    deep_confidence, deep_reason = deep_score(question)
    deep = deep_confidence >= DEEP_THRESHOLD
    if deep:
        reason += f" Deep consult suggested ({deep_reason})."
    if served_model is None:
        reason += f" No registered model serves {capability}; using MODEL_NAME."
    return RoutingDecision(
        capability=capability, served_model=served_model, model_name=model_name,
        confidence=round(confidence, 4), use_retrieval=use_retrieval, deep=deep,
        fallback=fallback, reason=reason, deep_confidence=round(deep_confidence, 4),
        router_version=version, scores=scores or {})


def _safe_path(question: str, reason: str, *, confidence: float = 0.0, version: str = "",
               scores: dict[str, float] | None = None) -> RoutingDecision:
    return _decision(LITERATURE, confidence=confidence, use_retrieval=True, fallback=True,
                     reason=reason, question=question, version=version, scores=scores)


def route(question: str, question_embedding: np.ndarray | None) -> RoutingDecision:
    row = RouterVersion.objects.filter(active=True).first()
    if row is None:
        return _safe_path(question, "No trained router yet (run `manage.py train_router`); "
                          "taking the literature path with retrieval.")
    if question_embedding is None:
        return _safe_path(question, "No question embedding was available; taking the "
                          "literature path with retrieval.", version=row.version)
    try:
        router = load_router(row)
    except (OSError, KeyError, ValueError) as error:
        logger.warning("router %s cannot be loaded from %s: %r", row.version, row.path, error)
        return _safe_path(question, f"The trained router {row.version} could not be loaded; "
                          "taking the literature path with retrieval.", version=row.version)
    embedding = np.asarray(question_embedding, dtype=np.float32).reshape(-1)
    if embedding.shape[0] != router.dim:
        logger.warning("router %s expects %d-d embeddings, got %d", row.version, router.dim,
                       embedding.shape[0])
        return _safe_path(question, f"The question embedding has {embedding.shape[0]} "
                          f"dimensions where the router expects {router.dim}; taking the "
                          "literature path with retrieval.", version=row.version)
    scores = router.probabilities(embedding)
    capability = max(scores, key=lambda label: scores[label])
    confidence = scores[capability]
    if confidence < row.confidence_threshold:
        return _safe_path(question, f"Router {row.version} leaned to {capability} with "
                          f"confidence {confidence:.2f}, below {row.confidence_threshold:.2f}; "
                          "taking the safer literature path with retrieval.",
                          confidence=confidence, version=row.version, scores=scores)
    use_retrieval = capability != KNOWLEDGE
    reason = (f"Router {row.version}: {capability} question (confidence {confidence:.2f})"
              + ("." if use_retrieval else "; general knowledge, answered without retrieval."))
    return _decision(capability, confidence=confidence, use_retrieval=use_retrieval,
                     fallback=False, reason=reason, question=question, version=row.version,
                     scores=scores)
