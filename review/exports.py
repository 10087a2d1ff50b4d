"""Reviewed answers become training data: SFT chats, DPO pairs, and a held-back benchmark.

Deterministic from the database alone: the same reviewed items and filters give the same bytes
(no timestamps, sorted keys, ordered by consultation), so an export can be rebuilt and checked.
The data file and its manifest are written aside, fsynced, then renamed into place (manifest
last): a crash mid-export never leaves a half-written file under either name.

A withheld answer (`Consultation.abstained`: its draft was never shown to the clinician) is
marked as such: `"withheld": true` in eval records and in the manifest's entry for every line
(SFT and DPO records keep exactly the keys TRL's trainers read).
Its draft is never a target: an SFT chat or an eval reference uses it only once a reviewer
corrected it into something else (an approved withheld draft is counted `withheld_draft` and
left out); as the rejected side of a DPO pair it is what it should be.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Count, Prefetch, Q
from django.utils import timezone

from clinic.models import Claim, RetrievedPassage
from modelsvc.prompts import PromptPassage, build_answer_messages, build_no_retrieval_messages
from review.models import ExportBatch, PhiClearance, ReviewDecision, ReviewItem
from review.phi import PhiGateUnavailable, scrub

logger = logging.getLogger(__name__)

MANIFEST_SCHEMA = 1
Progress = Callable[[int], None]


class ExportError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- Split, pseudonyms, normalisation ------------------------------------------------------

def _pseudonym_key() -> bytes:
    # Unset means the secret key, so a fresh install gets pseudonyms no one can reverse.
    return (settings.EXPORT_PSEUDONYM_KEY or settings.SECRET_KEY).encode()


def item_key(consultation_id: int) -> str:
    """A stable public id for an item that reveals nothing about the database."""
    digest = hmac.new(_pseudonym_key(), f"item:{consultation_id}".encode(), hashlib.sha256)
    return "item-" + digest.hexdigest()[:16]


def reviewer_pseudonym(user_id: int) -> str:
    digest = hmac.new(_pseudonym_key(), f"reviewer:{user_id}".encode(), hashlib.sha256)
    return "rev-" + digest.hexdigest()[:12]


def split_of(consultation_id: int) -> str:
    """train or eval, fixed per item forever (for a given salt and percentage)."""
    digest = hashlib.sha256(f"{settings.EXPORT_SPLIT_SALT}:{consultation_id}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    return "eval" if bucket < settings.EXPORT_EVAL_PERCENT else "train"


_WORD = re.compile(r"[a-z0-9]+")
_STOP = {"a", "an", "the", "of", "in", "on", "for", "to", "and", "or", "is", "are", "does",
         "do", "with", "what", "be", "by", "at", "as", "it"}


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_WORD.findall(text))


def token_set(text: str) -> frozenset[str]:
    return frozenset(word for word in normalise(text).split() if word not in _STOP)


class NearDuplicateIndex:
    """Exact (normalised) and token-set Jaccard look-ups, via an inverted index on tokens."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.exact: set[str] = set()
        self.sets: list[frozenset[str]] = []
        self.postings: dict[str, list[int]] = defaultdict(list)

    def add(self, text: str) -> None:
        self.exact.add(normalise(text))
        tokens = token_set(text)
        index = len(self.sets)
        self.sets.append(tokens)
        for token in tokens:
            self.postings[token].append(index)

    def match(self, text: str) -> str | None:
        """'exact', 'near' or None."""
        if normalise(text) in self.exact:
            return "exact"
        tokens = token_set(text)
        shared: Counter[int] = Counter()
        for token in tokens:
            shared.update(self.postings.get(token, ()))
        for index, count in shared.items():
            other = self.sets[index]
            if count / (len(tokens) + len(other) - count) >= self.threshold:
                return "near"
        return None


@lru_cache(maxsize=4)
def benchmark_index(data_dir: str, threshold: float) -> NearDuplicateIndex:
    """Questions of the public benchmarks we evaluate on: never train on them."""
    index = NearDuplicateIndex(threshold)
    base = Path(data_dir)
    pubmedqa = base / "pubmedqa" / "pqal_dev.json"
    exam = base / "exam" / "mirage_medmcqa_mmlu.json"
    missing = [str(path) for path in (pubmedqa, exam) if not path.exists()]
    if missing:
        raise ExportError(f"Benchmark files for decontamination are missing: {', '.join(missing)}"
                          ". Set LITERATURE_DATA_DIR to the folder holding pubmedqa/ and exam/.")
    for record in json.loads(pubmedqa.read_text()).values():
        index.add(record["QUESTION"])
    for subset in json.loads(exam.read_text()).values():
        for record in subset.values():
            index.add(record["question"])
    return index


# --- Building records ----------------------------------------------------------------------

@dataclass
class ExportResult:
    path: Path
    manifest_path: Path
    sha256: str
    counts: dict[str, Any]
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)


def _candidates() -> Any:
    return (ReviewItem.objects.filter(status=ReviewItem.Status.DONE)
            .select_related("consultation")
            .prefetch_related(
                Prefetch("consultation__passages",
                         queryset=RetrievedPassage.objects.order_by("rank")),
                Prefetch("consultation__claims", queryset=Claim.objects.order_by("position")),
                Prefetch("decisions", queryset=ReviewDecision.objects.order_by("created_at", "id")),
                Prefetch("phi_clearances",
                         queryset=PhiClearance.objects.order_by("created_at", "id")))
            .annotate(review_count=Count("decisions", filter=Q(decisions__is_adjudication=False)))
            .order_by("consultation_id"))


def _prompt_messages(question: str, patient_note: str, passages: list[RetrievedPassage],
                     use_retrieval: bool) -> list[dict[str, str]]:
    if use_retrieval and passages:
        return build_answer_messages(
            question, [PromptPassage(number=p.rank, pmid=p.pmid, title=p.title, text=p.text,
                                     retracted=p.retracted,
                                     retraction_notice_pmid=p.retraction_notice_pmid)
                       for p in passages], patient_note=patient_note)
    return build_no_retrieval_messages(question, patient_note=patient_note)


@dataclass
class Scrubbed:
    question: str
    patient_note: str
    final_answer: str
    model_answer: str
    redactions: Counter[str]
    unsure: list[str]


TEXT_FIELDS = ("question", "patient_note", "final_answer", "model_answer")


def source_texts(item: ReviewItem) -> dict[str, str]:
    """The free texts of an item as stored, before de-identification."""
    consultation = item.consultation
    return {"question": consultation.question, "patient_note": consultation.patient_note,
            "final_answer": item.final_answer_text or consultation.answer_text,
            "model_answer": consultation.answer_text}


def source_sha256(item: ReviewItem) -> str:
    return hashlib.sha256(canonical_line(source_texts(item))).hexdigest()


def current_clearance(item: ReviewItem) -> PhiClearance | None:
    """The latest admin decision on this item's PHI hold, if it is about the texts as they are."""
    clearances = list(item.phi_clearances.all())
    if not clearances:
        return None
    latest = clearances[-1]
    return latest if latest.source_sha256 == source_sha256(item) else None


def _scrub_texts(texts: dict[str, str], *, trust_unsure: bool = False) -> Scrubbed:
    redactions: Counter[str] = Counter()
    unsure: list[str] = []
    scrubbed = {}
    for name in TEXT_FIELDS:
        result = scrub(texts.get(name, ""))
        scrubbed[name] = result.text
        redactions.update(finding.kind for finding in result.findings)
        if not trust_unsure:
            unsure += [f"{name}: {reason}" for reason in result.unsure]
    return Scrubbed(redactions=redactions, unsure=sorted(set(unsure)), **scrubbed)


def scrub_item(item: ReviewItem) -> Scrubbed:
    return _scrub_texts(source_texts(item))


def _cleared_texts(clearance: PhiClearance) -> Scrubbed:
    """The admin's approved texts, run through the gate once more for what it is sure of: a
    person decided what the gate could not, but a pattern (a phone number typed in while
    editing) is still removed."""
    return _scrub_texts(clearance.texts, trust_unsure=True)


def _record(fmt: str, item: ReviewItem, scrubbed: Scrubbed) -> dict[str, Any]:
    consultation = item.consultation
    passages = list(consultation.passages.all())
    prompt = _prompt_messages(scrubbed.question, scrubbed.patient_note, passages,
                              consultation.use_retrieval)
    if fmt == ExportBatch.Format.SFT:
        return {"messages": prompt + [{"role": "assistant", "content": scrubbed.final_answer}]}
    if fmt == ExportBatch.Format.DPO:
        return {"prompt": prompt,
                "chosen": [{"role": "assistant", "content": scrubbed.final_answer}],
                "rejected": [{"role": "assistant", "content": scrubbed.model_answer}]}
    return {
        "id": item_key(consultation.pk),
        "question": scrubbed.question,
        "patient_note": scrubbed.patient_note,
        "messages": prompt,
        "passages": [{"number": p.rank, "pmid": p.pmid, "title": p.title, "year": p.year}
                     for p in passages],
        "reference_answer": scrubbed.final_answer,
        "reference_citations": [claim.get("citations", []) for claim in item.final_claims],
        "outcome": item.outcome,
        "specialty": item.specialty,
        "withheld": consultation.abstained,
    }


def _rewritten(item: ReviewItem) -> bool:
    return (item.outcome == ReviewItem.Outcome.CORRECTED
            and item.final_answer_text.strip() != item.consultation.answer_text.strip())


def _withheld_draft_as_target(fmt: str, item: ReviewItem) -> bool:
    """Would this record teach (or score against) a draft that was withheld from the clinician?"""
    return (fmt != ExportBatch.Format.DPO and item.consultation.abstained
            and item.outcome in (ReviewItem.Outcome.APPROVED, ReviewItem.Outcome.CORRECTED)
            and not _rewritten(item))


def _wanted(fmt: str, item: ReviewItem) -> bool:
    if fmt == ExportBatch.Format.DPO:
        return _rewritten(item)
    return item.outcome in (ReviewItem.Outcome.APPROVED, ReviewItem.Outcome.CORRECTED)


def canonical_line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False, sort_keys=True,
                      separators=(",", ":")).encode() + b"\n"


def _write_aside(path: Path, payload: bytes) -> Path:
    """payload in a new hidden file beside path, on disk (fsynced); the caller renames it."""
    # A name of its own per writer ("x": never another's), created with the usual permissions.
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    handle = open(temporary, "xb")  # closed below; removed if writing fails
    try:
        with handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def write_files_atomically(files: list[tuple[Path, bytes]]) -> None:
    """Write each (path, payload) so that a final name only ever holds a complete file.

    Every payload is written and fsynced under a temporary name in the same folder first; only
    then are they renamed into place, in order (the manifest last), so a crash or a full disk
    while writing leaves the previous files, or none, never a half-written one. A run killed
    outright may leave a hidden `.NAME.*.tmp` behind; nothing reads it, and it can be deleted.
    """
    folders = {path.parent for path, _ in files}
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, Path]] = []
    try:
        for path, payload in files:
            written.append((_write_aside(path, payload), path))
        for temporary, path in written:
            os.replace(temporary, path)
    finally:
        for temporary, _ in written:
            temporary.unlink(missing_ok=True)
    for folder in folders:
        # The renames themselves are durable only once the folder's entry is on disk.
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def build_export(*, fmt: str, out_dir: Path, since: date | None = None, min_reviews: int = 1,
                 progress: Progress | None = None, mark_held: bool = True) -> ExportResult:
    """Write FORMAT.jsonl and FORMAT.manifest.json into out_dir; same inputs, same bytes."""
    if fmt not in ExportBatch.Format.values:
        raise ExportError(f"Unknown format {fmt!r}; choose sft, dpo or eval.")
    threshold = settings.EXPORT_NEAR_DUPLICATE_JACCARD
    benchmarks = benchmark_index(str(settings.LITERATURE_DATA_DIR), threshold)
    counts: Counter[str] = Counter()
    redactions: Counter[str] = Counter()
    seen = NearDuplicateIndex(threshold)
    items = list(_candidates())
    lines: list[bytes] = []
    line_items: list[str] = []
    line_withheld: list[bool] = []
    models: set[str] = set()
    prompt_versions: set[str] = set()
    reviewers: set[str] = set()
    held_ids: dict[int, list[str]] = {}
    clear_ids: list[int] = []
    wanted_split = "eval" if fmt == ExportBatch.Format.EVAL else "train"
    for position, item in enumerate(items):
        if progress and position % 20 == 0:
            progress(int(90 * position / max(len(items), 1)))
        consultation = item.consultation
        counts["reviewed"] += 1
        # Duplicates are judged over every reviewed item, whatever the split or filters, so a
        # question and its near-copy can never sit on both sides of the split.
        duplicate = seen.match(consultation.question)
        seen.add(consultation.question)
        if duplicate:
            counts[f"duplicate_{duplicate}"] += 1
            continue
        if benchmarks.match(consultation.question):
            counts["contaminated"] += 1
            continue
        if split_of(consultation.pk) != wanted_split:
            counts["other_split"] += 1
            continue
        if since and (item.resolved_at is None or item.resolved_at.date() < since):
            counts["before_since"] += 1
            continue
        if item.review_count < min_reviews:
            counts["too_few_reviews"] += 1
            continue
        if not _wanted(fmt, item):
            counts["not_applicable"] += 1
            continue
        if _withheld_draft_as_target(fmt, item):
            counts["withheld_draft"] += 1
            continue
        scrubbed = scrub_item(item)
        if scrubbed.unsure:
            clearance = current_clearance(item)
            if clearance is None:
                counts["phi_held"] += 1
                held_ids[item.pk] = scrubbed.unsure
                continue
            if clearance.decision == PhiClearance.Decision.EXCLUDE:
                counts["phi_excluded_by_admin"] += 1
                continue
            counts["phi_released_by_admin"] += 1
            scrubbed = _cleared_texts(clearance)
        else:
            clear_ids.append(item.pk)
        if scrubbed.redactions:
            counts["phi_redacted_records"] += 1
            redactions.update(scrubbed.redactions)
        lines.append(canonical_line(_record(fmt, item, scrubbed)))
        line_items.append(item_key(consultation.pk))
        line_withheld.append(consultation.abstained)
        if consultation.abstained:
            counts["withheld_exported"] += 1
        models.add(item.model_name or "unknown")
        if consultation.prompt_version:
            prompt_versions.add(consultation.prompt_version)
        reviewers.update(reviewer_pseudonym(decision.reviewer_id)
                         for decision in item.decisions.all())
    counts["exported"] = len(lines)
    if mark_held:
        for item_id, unsure in held_ids.items():
            ReviewItem.objects.filter(pk=item_id).update(phi_status=ReviewItem.PhiStatus.HELD,
                                                         phi_findings=unsure)
        ReviewItem.objects.filter(pk__in=clear_ids).update(phi_status=ReviewItem.PhiStatus.CLEAR)

    data_path = out_dir / f"{fmt}.jsonl"
    payload = b"".join(lines)
    digest = hashlib.sha256(payload).hexdigest()
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "format": fmt,
        "file": data_path.name,
        "sha256": digest,
        "records": len(lines),
        "filters": {"since": since.isoformat() if since else None, "min_reviews": min_reviews},
        "split": {"part": wanted_split, "salt": settings.EXPORT_SPLIT_SALT,
                  "eval_percent": settings.EXPORT_EVAL_PERCENT},
        "dedup": {"method": "normalised text + token-set Jaccard", "threshold": threshold},
        "decontamination": ["pubmedqa/pqal_dev.json QUESTION",
                            "exam/mirage_medmcqa_mmlu.json question"],
        "counts": dict(sorted(counts.items())),
        "phi": {"gate": "presidio-analyzer patterns + review.phi rules + names-dataset",
                "held_for_human": counts["phi_held"],
                "released_by_admin": counts["phi_released_by_admin"],
                "excluded_by_admin": counts["phi_excluded_by_admin"],
                "redactions_by_kind": dict(sorted(redactions.items()))},
        "model_versions": sorted(models),
        "prompt_versions": sorted(prompt_versions),
        "reviewers": sorted(reviewers),
        "lines": [{"line": number, "item": key, "withheld": withheld,
                   "sha256": hashlib.sha256(line).hexdigest()}
                  for number, (key, withheld, line) in enumerate(
                      zip(line_items, line_withheld, lines, strict=True), start=1)],
    }
    manifest_path = out_dir / f"{fmt}.manifest.json"
    write_files_atomically([
        (data_path, payload),
        (manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()),
    ])
    if progress:
        progress(100)
    logger.info("export %s: %d records to %s", fmt, len(lines), data_path)
    return ExportResult(path=data_path, manifest_path=manifest_path, sha256=digest,
                        counts=dict(counts), manifest=manifest)


# --- Verification --------------------------------------------------------------------------

def verify_export(out_dir: Path) -> list[str]:
    """Problems found, one sentence each; empty when every file matches its manifest."""
    problems: list[str] = []
    manifests = sorted(out_dir.glob("*.manifest.json"))
    if not manifests:
        return [f"No *.manifest.json in {out_dir}."]
    for manifest_path in manifests:
        manifest = json.loads(manifest_path.read_text())
        data_path = out_dir / manifest["file"]
        if not data_path.exists():
            problems.append(f"{manifest['file']}: missing.")
            continue
        payload = data_path.read_bytes()
        if hashlib.sha256(payload).hexdigest() == manifest["sha256"]:
            continue
        problems.append(f"{manifest['file']}: SHA-256 does not match the manifest.")
        lines = payload.splitlines(keepends=True)
        expected = manifest["lines"]
        for entry, line in zip(expected, lines, strict=False):
            if hashlib.sha256(line).hexdigest() != entry["sha256"]:
                problems.append(f"{manifest['file']} line {entry['line']} ({entry['item']}) "
                                "was edited.")
        if len(lines) != len(expected):
            problems.append(f"{manifest['file']}: {len(lines)} lines, the manifest lists "
                            f"{len(expected)}.")
    return problems


# --- Batches -------------------------------------------------------------------------------

def run_export_batch(batch_id: int) -> ExportBatch | None:
    """Do (or redo) one ExportBatch; a rerun rewrites the same bytes, so it is harmless."""
    batch = ExportBatch.objects.filter(pk=batch_id).first()
    if batch is None:
        logger.warning("export batch %s no longer exists; nothing to do", batch_id)
        return None
    if batch.status == ExportBatch.Status.DONE:
        return batch
    ExportBatch.objects.filter(pk=batch_id).update(status=ExportBatch.Status.RUNNING,
                                                   progress=0, error_message="")
    out_dir = Path(batch.out_dir or Path(settings.EXPORT_DIR) / f"batch-{batch.pk}")

    def progress(percent: int) -> None:
        ExportBatch.objects.filter(pk=batch_id).update(progress=percent)

    try:
        result = build_export(fmt=batch.format, out_dir=out_dir, since=batch.since,
                              min_reviews=batch.min_reviews, progress=progress)
    except Exception as error:
        message = error.message if isinstance(error, ExportError) else (
            str(error) if isinstance(error, PhiGateUnavailable)
            else f"The export failed ({type(error).__name__}); see the worker log.")
        logger.exception("export batch %s failed", batch_id)
        ExportBatch.objects.filter(pk=batch_id).update(status=ExportBatch.Status.FAILED,
                                                       error_message=message,
                                                       finished_at=timezone.now())
        raise
    ExportBatch.objects.filter(pk=batch_id).update(
        status=ExportBatch.Status.DONE, progress=100, out_dir=str(out_dir),
        file_name=result.path.name, sha256=result.sha256, counts=result.counts,
        finished_at=timezone.now())
    return ExportBatch.objects.get(pk=batch_id)
