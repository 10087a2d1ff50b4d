"""Entailment engines for claim verification: which verdict a passage gives a claim.

An engine judges (claim, passage) pairs as supported / contradicted / not_found, each with
its probabilities. `modelsvc.verification.score_claims` turns pair verdicts into one verdict
per claim; this module only knows about pairs and how to load an engine.

Engines, chosen by VERIFIER_ENGINE (auto | lexical | cross-encoder | judge):
- cross-encoder: a 3-label sequence-classification model. VERIFIER_MODEL names it (a folder or
  a hub id; the label order is read from its config's id2label, entailment / contradiction /
  neutral or supported / contradicted / not_found); unset means the latest verifier trained
  here (`manage.py train_verifier`, VAR_DIR/verifiers/<version>/). A verifier trained here
  carries a combiner in its data card: its probabilities are combined with the claim checks
  of `claim_checks` (a number, population or direction the passage does not state, negation
  the evidence lacks) by a logistic regression fitted on articles it never trained on.
- lexical: the embedding + word-overlap score of `verification` (never says contradicted).
- judge: the served model asked with guided JSON (GPU deployments).
`auto` is the cross-encoder when VERIFIER_MODEL is set or a trained verifier exists, else
lexical. torch and sentence-transformers are imported only when a cross-encoder is loaded.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from modelsvc import claim_checks
from modelsvc.claim_changes import CONTRADICTED, LABELS, NOT_FOUND, SUPPORTED, split_sentences

logger = logging.getLogger(__name__)

ENGINES = ("auto", "lexical", "cross-encoder", "judge")
VERIFIERS_FOLDER = "verifiers"
DATA_CARD = "data_card.json"
MODEL_FOLDER = "model"
# Evidence is cut to the passage's sentences closest to the claim, about this many words, so a
# claim costs one short forward pass (5 claims in ~50 ms on 2 cores with OpenVINO bf16).
EVIDENCE_WORDS = 64
MAX_LENGTH = 128

_LABEL_NAMES = {
    SUPPORTED: ("supported", "entailment", "entails", "entailed", "support"),
    CONTRADICTED: ("contradicted", "contradiction", "contradicts", "refuted", "refutes"),
    NOT_FOUND: ("not_found", "neutral", "not enough info", "not_enough_info", "nei",
                "unrelated"),
}
_TERM = re.compile(r"[a-z][a-z0-9-]+|\d+(?:\.\d+)?")
_COMMON = frozenset(
    "the and of in on at to for with by from as is are was were be been being this that these "
    "those it its their there than then which who what when where how may might can could "
    "should would will also more most such into over under between among both each other "
    "some any all our we study results patients".split())


class VerifierError(ImproperlyConfigured):
    """The configured verifier cannot be loaded or used; the message says what to set."""


@dataclass(frozen=True)
class PairVerdict:
    verdict: str
    probabilities: dict[str, float] = field(default_factory=dict)

    @property
    def support(self) -> float:
        return self.probabilities.get(SUPPORTED, 0.0)


class Verifier(Protocol):
    name: str

    def judge(self, pairs: Sequence[tuple[str, str]]) -> list[PairVerdict]:
        """One verdict per (claim, passage) pair, in order."""
        ...


def _terms(text: str) -> set[str]:
    return {word[:6] for word in _TERM.findall(text.lower()) if word not in _COMMON}


def select_evidence(claim: str, passage: str, *, max_words: int = EVIDENCE_WORDS) -> str:
    """The passage's sentences that share most terms with the claim, in their original order,
    up to about `max_words` words (at least one sentence). Training, the benchmark and serving
    all cut evidence this way, so the verifier always sees what it was trained on."""
    sentences = split_sentences(passage)
    if sum(len(s.split()) for s in sentences) <= max_words:
        return " ".join(sentences) or passage
    claim_terms = _terms(claim)
    ranked = sorted(range(len(sentences)),
                    key=lambda i: (-len(claim_terms & _terms(sentences[i])), i))
    chosen: list[int] = []
    words = 0
    for index in ranked:
        length = len(sentences[index].split())
        if chosen and words + length > max_words:
            continue
        chosen.append(index)
        words += length
    return " ".join(sentences[i] for i in sorted(chosen))


def label_order(id2label: dict[Any, Any]) -> list[str]:
    """Our verdict for each of a model's output indices, from its config's id2label."""
    order: dict[int, str] = {}
    for index, name in id2label.items():
        lowered = str(name).strip().lower().replace("-", "_")
        for verdict, names in _LABEL_NAMES.items():
            if lowered in names or lowered.replace("_", " ") in names:
                order[int(index)] = verdict
    if sorted(order) != list(range(len(id2label))) or set(order.values()) != set(LABELS):
        raise VerifierError(
            f"The verifier model's labels {dict(id2label)} cannot be read as entailment / "
            "contradiction / neutral; set VERIFIER_MODEL to a 3-label NLI cross-encoder (its "
            "config.json id2label names the labels).")
    return [order[i] for i in range(len(order))]


def verifier_backend() -> str:
    """VERIFIER_BACKEND with auto resolved: openvino where it is installed, else torch-int8."""
    from retrieval.embedding import openvino_installed

    backend = str(settings.VERIFIER_BACKEND)
    if backend == "auto":
        return "openvino" if openvino_installed() else "torch-int8"
    return backend


class OpenVINOClassifier:
    """The cross-encoder converted in memory with openvino.convert_model (a second or two at
    load), run by OpenVINO's CPU runtime in bfloat16 where the CPU has it: the same logits as
    fp32 to ~1e-2, about 1.2x torch's int8 on 2 cores (bench/verifier.py)."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        import openvino
        import torch

        from retrieval.embedding import openvino_cpu_request

        sample = dict(tokenizer(["a premise", "another premise here"], ["a claim", "claim"],
                                padding=True, return_tensors="pt"))
        self.inputs = [name for name in ("input_ids", "attention_mask", "token_type_ids")
                       if name in sample]
        sample = {name: sample[name] for name in self.inputs}

        names = self.inputs

        class Logits(torch.nn.Module):  # positional inputs: the tracer takes no **kwargs
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids: Any, attention_mask: Any,
                        token_type_ids: Any = None) -> Any:
                given = {"input_ids": input_ids, "attention_mask": attention_mask,
                         "token_type_ids": token_type_ids}
                return self.model(**{name: given[name] for name in names}).logits

        dynamic = openvino.PartialShape([-1, -1])
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shapes the graph keeps dynamic
            converted = openvino.convert_model(
                Logits(), example_input=sample,
                input=[(name, dynamic, openvino.Type.i64) for name in self.inputs])
        self._request, self.precision = openvino_cpu_request(converted)

    def logits(self, encoded: dict[str, Any]) -> np.ndarray:
        feeds = {name: np.asarray(encoded[name], dtype=np.int64) for name in self.inputs}
        return np.asarray(self._request.infer(feeds)[0], dtype=np.float32)


class CrossEncoderVerifier:
    """A sequence-classification cross-encoder over (evidence, claim), premise first as NLI
    models expect. VERIFIER_BACKEND runs it: openvino (bfloat16 where the CPU has it), torch-int8
    (int8 dynamic quantisation of its linear layers, 3-4x float32) or torch (float32)."""

    def __init__(self, location: str | Path, *, name: str = "", backend: str | None = None,
                 max_length: int | None = None, evidence_words: int | None = None) -> None:
        import torch
        from sentence_transformers import CrossEncoder

        folder = Path(location).expanduser()
        card = _read_card(folder)
        model_location = folder / MODEL_FOLDER if (folder / MODEL_FOLDER).is_dir() else location
        try:
            cross_encoder = CrossEncoder(str(model_location), device="cpu")
        except Exception as error:  # library errors become one actionable sentence
            raise VerifierError(
                f"Cannot load the verifier model {str(location)!r} ({error}). Set "
                "VERIFIER_MODEL to a cross-encoder folder or hub id that is available offline, "
                "unset it to use the latest `manage.py train_verifier` output, or set "
                "VERIFIER_ENGINE=lexical.") from error
        model = cross_encoder[0].auto_model
        self.labels = label_order(dict(model.config.id2label))
        self.tokenizer = cross_encoder.tokenizer
        model.eval()
        wanted = backend or verifier_backend()
        self.backend = "torch"
        self.openvino: OpenVINOClassifier | None = None
        if wanted == "openvino":
            try:
                self.openvino = OpenVINOClassifier(model, self.tokenizer)
                self.backend = "openvino"
            except Exception as error:  # no openvino, failed conversion: torch still works
                logger.warning("VERIFIER_BACKEND=openvino is unavailable (%s: %s); the "
                               "verifier runs on torch int8", type(error).__name__, error)
                wanted = "torch-int8"
        if wanted == "torch-int8":
            try:
                with warnings.catch_warnings():
                    # torch marks eager-mode quantisation deprecated; it is what runs on CPU.
                    warnings.simplefilter("ignore")
                    model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear},
                                                                   dtype=torch.qint8)
                self.backend = "torch-int8"
            except (AttributeError, RuntimeError) as error:
                logger.warning("int8 quantisation unavailable, verifier runs in float32: %r",
                               error)
        self.model = model
        self.name = name or str(card.get("version") or location)
        self.card = card
        self.max_length = int(max_length or card.get("max_length") or MAX_LENGTH)
        self.evidence_words = int(evidence_words or card.get("evidence_words") or EVIDENCE_WORDS)
        self.decision: dict[str, Any] = dict(card.get("decision") or {})
        self.combiner = (claim_checks.Combiner.from_dict(card["combiner"])
                         if card.get("combiner") else None)
        self._lock = threading.Lock()

    def judge(self, pairs: Sequence[tuple[str, str]]) -> list[PairVerdict]:
        """With a combiner in the data card (verifiers trained here), the cross-encoder's
        probabilities, its probabilities for the claim reversed and the claim's mismatches
        with the passage are combined (`claim_checks`); otherwise its probabilities alone."""
        verdicts = []
        reversed_claims = self.combiner is not None and self.combiner.uses_reversals
        for measured in self.measure(pairs, reversed_claims=reversed_claims):
            by_label = (self.combiner.probabilities(measured.features)
                        if self.combiner is not None else measured.probabilities)
            verdicts.append(PairVerdict(decide(by_label, self.decision), by_label))
        return verdicts

    def measure(self, pairs: Sequence[tuple[str, str]], *, reversed_claims: bool = True
                ) -> list[Measured]:
        """The cross-encoder's probabilities for each pair, with the claim's reversals judged
        against the same evidence in the same batch, and the combiner's features."""
        rows: list[tuple[str, str]] = []
        spans: list[tuple[int, int, str]] = []
        for claim, passage in pairs:
            evidence = select_evidence(claim, passage, max_words=self.evidence_words)
            variants = claim_checks.reversals(claim) if reversed_claims else []
            spans.append((len(rows), len(variants), evidence))
            rows += [(evidence, claim)] + [(evidence, variant) for variant in variants]
        probabilities = self._forward(rows)
        measured = []
        for (claim, passage), (start, count, evidence) in zip(pairs, spans, strict=True):
            own, reversals = probabilities[start], probabilities[start + 1:start + 1 + count]
            measured.append(Measured(own, claim_checks.features(
                own, reversals, claim, passage, evidence)))
        return measured

    def _forward(self, rows: Sequence[tuple[str, str]], batch: int = 64
                 ) -> list[dict[str, float]]:
        import torch

        found: list[dict[str, float]] = []
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            encoded = self.tokenizer([evidence for evidence, _ in chunk],
                                     [claim for _, claim in chunk], padding=True,
                                     truncation="longest_first", max_length=self.max_length,
                                     return_tensors="pt")
            # One forward pass at a time: the runtime already uses every core for each.
            with self._lock, torch.inference_mode():
                logits = (torch.from_numpy(self.openvino.logits(encoded))
                          if self.openvino is not None else self.model(**encoded).logits.float())
            for row in torch.softmax(logits, dim=-1).tolist():
                found.append({label: round(float(p), 4)
                              for label, p in zip(self.labels, row, strict=True)})
        return found


@dataclass(frozen=True)
class Measured:
    probabilities: dict[str, float]  # the cross-encoder's, for the claim as written
    features: dict[str, float]


def decide(probabilities: dict[str, float], decision: dict[str, Any]) -> str:
    """The verdict: contradicted at `contradicted_at`, else supported at `supported_at`, else
    not_found; without thresholds (a model not trained here) the most probable label. The
    thresholds of a trained verifier are chosen on its validation articles (data card)."""
    if "contradicted_at" not in decision:
        return max(probabilities, key=lambda label: probabilities[label])
    if probabilities.get(CONTRADICTED, 0.0) >= float(decision["contradicted_at"]):
        return CONTRADICTED
    if probabilities.get(SUPPORTED, 0.0) >= float(decision["supported_at"]):
        return SUPPORTED
    return NOT_FOUND


def _read_card(folder: Path) -> dict[str, Any]:
    path = folder / DATA_CARD
    if not path.is_file():
        return {}
    try:
        card: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise VerifierError(f"The verifier's data card {path} cannot be read ({error}); "
                            "retrain with `manage.py train_verifier`.") from error
    return card


def verifiers_dir() -> Path:
    return Path(settings.VAR_DIR) / VERIFIERS_FOLDER


def trained_verifiers() -> list[Path]:
    """Complete verifier folders (data card and model written), oldest first: folders are
    named by training time and moved into place only when complete."""
    root = verifiers_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and (p / DATA_CARD).is_file() and (p / MODEL_FOLDER).is_dir())


def latest_trained_verifier() -> Path | None:
    found = trained_verifiers()
    return found[-1] if found else None


def configured_engine() -> str:
    """lexical, cross-encoder or judge: what VERIFIER_ENGINE and VERIFIER_MODEL select now."""
    engine = str(settings.VERIFIER_ENGINE or "auto")
    if engine not in ENGINES:
        raise VerifierError(f"VERIFIER_ENGINE={engine!r} is not one of {', '.join(ENGINES)}.")
    if engine != "auto":
        return engine
    if str(settings.VERIFIER_MODEL or "").strip() or latest_trained_verifier():
        return "cross-encoder"
    return "lexical"


def verifier_location() -> str:
    """The cross-encoder to load: VERIFIER_MODEL, else the latest trained one."""
    configured = str(settings.VERIFIER_MODEL or "").strip()
    if configured:
        path = Path(configured).expanduser()
        if path.exists():
            return str(path)
        if configured.startswith(("/", ".", "~")) or configured.count("/") > 1:
            raise VerifierError(
                f"VERIFIER_MODEL={configured!r} is not a folder that exists. Point it at a "
                "verifier folder (VAR_DIR/verifiers/<version>) or an NLI cross-encoder folder, "
                "or give a hub id such as cross-encoder/nli-deberta-v3-small.")
        return configured  # a hub id; loading says so if it is not available offline
    latest = latest_trained_verifier()
    if latest is None:
        raise VerifierError("No verifier has been trained yet and VERIFIER_MODEL is unset: run "
                            "`python manage.py train_verifier`, set VERIFIER_MODEL, or set "
                            "VERIFIER_ENGINE=lexical.")
    return str(latest)


_loaded: dict[str, CrossEncoderVerifier] = {}
_load_lock = threading.Lock()


def get_verifier(location: str | None = None) -> CrossEncoderVerifier:
    """The process-wide cross-encoder for `location` (default: the configured one)."""
    location = location or verifier_location()
    if location in _loaded:
        return _loaded[location]
    with _load_lock:
        if location not in _loaded:
            started = time.monotonic()
            _loaded[location] = CrossEncoderVerifier(location)
            logger.info("loaded claim verifier %s in %.1fs", location,
                        time.monotonic() - started)
    return _loaded[location]


def describe_engine() -> str:
    """A short name of the configured engine for run records: lexical, judge, or the
    cross-encoder's version / location."""
    engine = configured_engine()
    if engine != "cross-encoder":
        return engine
    location = verifier_location()
    card = _read_card(Path(location)) if Path(location).exists() else {}
    return f"cross-encoder:{card.get('version') or location}"
