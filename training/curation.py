"""A curated training set: a verified export's train split plus the synthetic literature set.

The export is checked against its manifest (SHA-256, line by line) before anything is read, and
only a train-split export is accepted. Then every example passes the same filters, each counted
by reason in the data card:

- never a withheld or abstained draft as a target (an approved abstention exports its draft);
- length limits on the prompt and the target;
- the PHI gate again on what the model would learn to say (export texts were scrubbed once);
- decontamination against every evaluation suite's files (or the files given instead, e.g. a
  bench's held-out half): PubMedQA questions and PMIDs (an example whose passages quote a
  PubMedQA article would leak its conclusion), MIRAGE questions, and the review queue's eval
  split; a literature article that is contaminated is dropped before the examples are built, so
  it is never another example's distractor passage either;
- exact and near duplicates (reviewed examples first, so a reviewer's answer wins over the
  literature's).

Deterministic: the same export, articles and limits give the same bytes and the same card hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from evaluation.reviewed import held_out_items
from evaluation.suites import SUITES, EvalError, default_paths, file_format, read_json
from review.exports import (
    NearDuplicateIndex,
    canonical_line,
    item_key,
    split_of,
    verify_export,
)
from review.models import ReviewItem
from review.phi import PhiGateUnavailable, scrub
from training.literature import LiteratureOptions, LiteratureSource, build_examples

logger = logging.getLogger(__name__)

CARD_SCHEMA = 1
MIN_TARGET_CHARS = 20
MAX_TARGET_CHARS = 4000
MAX_PROMPT_CHARS = 12000

_QUESTION = re.compile(r"<question>\n(.*?)\n</question>", re.DOTALL)
_PMID = re.compile(r'<passage number="\d+" pmid="([^"]*)">')


class TrainingDataError(Exception):
    """The training data cannot be built or used; the message says what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Limits:
    min_target_chars: int = MIN_TARGET_CHARS
    max_target_chars: int = MAX_TARGET_CHARS
    max_prompt_chars: int = MAX_PROMPT_CHARS


@dataclass
class CuratedSet:
    path: Path
    card: dict[str, Any]
    card_sha256: str
    sft_records: int
    dpo_records: int
    export_sha256: str = ""
    literature_sha256: str = ""
    literature_examples: int = 0


@dataclass
class _Candidate:
    source: str  # review_approved, review_corrected, literature
    ident: str
    question: str
    prompt_text: str
    target: str
    pmids: list[str]
    record: dict[str, Any]
    label: str = ""
    rejected: str = ""


@dataclass
class _Filters:
    threshold: float
    limits: Limits
    benchmarks: NearDuplicateIndex
    pubmedqa_pmids: frozenset[str]
    reviewed_eval: NearDuplicateIndex
    seen: dict[str, NearDuplicateIndex] = field(default_factory=dict)
    dropped: Counter[str] = field(default_factory=Counter)

    def reject_reason(self, candidate: _Candidate, fmt: str, *, phi: bool) -> str | None:
        target = candidate.target.strip()
        if len(target) < self.limits.min_target_chars:
            return "target shorter than the minimum"
        if len(target) > self.limits.max_target_chars:
            return "target longer than the maximum"
        if len(candidate.prompt_text) > self.limits.max_prompt_chars:
            return "prompt longer than the maximum"
        if candidate.rejected and candidate.rejected.strip() == target:
            return "chosen and rejected are the same"
        contamination = self.contamination(candidate.question, candidate.pmids)
        if contamination:
            return contamination
        if phi:
            for text in (candidate.question, target):
                result = scrub(text)
                if result.findings or result.unsure:
                    return "PHI gate: identifiers or unsure text in the question or target"
        seen = self.seen.setdefault(fmt, NearDuplicateIndex(self.threshold))
        duplicate = seen.match(candidate.question)
        seen.add(candidate.question)
        if duplicate:
            return f"{duplicate} duplicate question"
        return None

    def contamination(self, question: str, pmids: list[str]) -> str | None:
        if self.pubmedqa_pmids.intersection(pmids):
            return "decontamination: a PubMedQA article in its passages"
        if self.benchmarks.match(question):
            return "decontamination: PubMedQA or MIRAGE question"
        if self.reviewed_eval.match(question):
            return "decontamination: question of the reviewed eval split"
        return None


def _sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _question_of(messages: list[dict[str, Any]]) -> tuple[str, str, list[str]]:
    """(question, the prompt's text, the passages' PMIDs) of an exported prompt."""
    user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    match = _QUESTION.search(user)
    prompt_text = "\n".join(str(m.get("content", "")) for m in messages)
    return (match.group(1).strip() if match else user.strip()), prompt_text, _PMID.findall(user)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _load_export(export_dir: Path) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """{fmt: (manifest, records)} for the SFT and DPO files of a verified train-split export."""
    if not export_dir.is_dir():
        raise TrainingDataError(f"The export folder {export_dir} does not exist; export the "
                                "training data first (`manage.py export_training --format sft "
                                f"--out {export_dir}`).")
    problems = verify_export(export_dir)
    if problems:
        raise TrainingDataError("The export fails verification against its manifest, so it is "
                                "not used for training: " + " ".join(problems)
                                + " Export again rather than editing the files.")
    found: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for fmt in ("sft", "dpo", "eval"):
        manifest_path = export_dir / f"{fmt}.manifest.json"
        if not manifest_path.exists():
            continue
        manifest = json.loads(manifest_path.read_text())
        part = (manifest.get("split") or {}).get("part")
        if fmt == "eval" or part != "train":
            raise TrainingDataError(
                f"{manifest_path.name} is the export's {part or 'unknown'} split: training reads "
                "the train split only (the eval split is the reviewed benchmark). Point "
                "--export at a folder holding sft and/or dpo exports.")
        found[fmt] = (manifest, _read_jsonl(export_dir / manifest["file"]))
    if not found:
        raise TrainingDataError(f"{export_dir} holds no sft or dpo export manifest.")
    return found


def _review_items_by_key() -> dict[str, tuple[str, bool]]:
    """item key -> (outcome, the answer was withheld or abstained) for every resolved item."""
    rows = (ReviewItem.objects.filter(status=ReviewItem.Status.DONE)
            .values_list("consultation_id", "outcome", "consultation__abstained"))
    return {item_key(consultation_id): (outcome, bool(abstained))
            for consultation_id, outcome, abstained in rows}


def _reviewed_eval_index(threshold: float) -> NearDuplicateIndex:
    """Questions on the eval side of the review split, as stored and as the suite reads them."""
    index = NearDuplicateIndex(threshold)
    for consultation_id, question in ReviewItem.objects.values_list(
            "consultation_id", "consultation__question"):
        if split_of(consultation_id) == "eval":
            index.add(question)
    try:
        items, _source = held_out_items()
    except EvalError:
        items = []
    for item in items:
        index.add(item.question)
    return index


def evaluation_files() -> list[Path]:
    """Every evaluation suite's default data files: what training never learns from."""
    paths = {path for suite in SUITES.values() for path in default_paths(suite)}
    return sorted(paths)


def _decontamination(paths: list[Path], threshold: float,
                     ) -> tuple[NearDuplicateIndex, frozenset[str], list[dict[str, Any]]]:
    """(questions, PubMedQA PMIDs, what each file gave) of PubMedQA- or MIRAGE-format files."""
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise TrainingDataError(
            f"Evaluation files to decontaminate against are missing: {', '.join(missing)}. Set "
            "LITERATURE_DATA_DIR to the folder holding pubmedqa/ and exam/, or pass existing "
            "files with --decontaminate.")
    index = NearDuplicateIndex(threshold)
    pmids: set[str] = set()
    described = []
    for path in paths:
        try:
            data = read_json(path)
            kind = file_format(data)
        except EvalError as error:
            raise TrainingDataError(f"{path} cannot be used for decontamination: {error}") \
                from error
        if kind == "pubmedqa":
            questions = [str(record["QUESTION"]) for record in data.values()]
            pmids.update(str(pmid) for pmid in data)
        else:
            questions = [str(record["question"]) for subset in data.values()
                         for record in subset.values()]
        for question in questions:
            index.add(question)
        described.append({"file": str(path), "format": kind,
                          "sha256": _sha256(path.read_bytes()), "questions": len(questions),
                          "pmids": len(data) if kind == "pubmedqa" else 0})
    return index, frozenset(pmids), described


def _export_candidates(fmt: str, manifest: dict[str, Any], records: list[dict[str, Any]],
                       items: dict[str, tuple[str, bool]], dropped: Counter[str],
                       ) -> list[_Candidate]:
    candidates = []
    for entry, record in zip(manifest["lines"], records, strict=True):
        key = entry["item"]
        if key not in items:
            dropped[f"review: item no longer in the review queue ({fmt})"] += 1
            continue
        outcome, abstained = items[key]
        if fmt == "sft":
            prompt = record["messages"][:-1]
            target = record["messages"][-1]["content"]
            rejected = ""
        else:
            prompt = record["prompt"]
            target = record["chosen"][-1]["content"]
            rejected = record["rejected"][-1]["content"]
        if abstained and outcome != ReviewItem.Outcome.CORRECTED:
            # The reviewer approved the abstention; the draft the model wrote is not an answer.
            dropped[f"review: withheld or abstained draft as the target ({fmt})"] += 1
            continue
        question, prompt_text, pmids = _question_of(prompt)
        candidates.append(_Candidate(
            source=f"review_{outcome}", ident=key, question=question, prompt_text=prompt_text,
            target=target, pmids=pmids, record=record, rejected=rejected))
    return candidates


ANSWER_LABELS = ("yes", "no", "maybe")


def balance_labels(candidates: list[_Candidate]) -> tuple[list[_Candidate], dict[str, Any]]:
    """Cap each answer label of the literature examples at the count of the second commonest,
    keeping the examples first in sha256("balance:" + id) order (deterministic, unrelated to
    the label). An adapter trained on 246 "yes" against 87 "no" learnt to say "yes" to
    everything (issue 16); other examples are kept as they are."""
    labelled: dict[str, list[_Candidate]] = {label: [] for label in ANSWER_LABELS}
    for candidate in candidates:
        if candidate.source == "literature" and candidate.label in labelled:
            labelled[candidate.label].append(candidate)
    counts = sorted((len(group) for group in labelled.values()), reverse=True)
    cap = counts[1]
    dropped: set[int] = set()
    for group in labelled.values():
        ordered = sorted(group, key=lambda c: hashlib.sha256(
            f"balance:{c.ident}".encode()).hexdigest())
        dropped.update(id(candidate) for candidate in ordered[cap:])
    kept = [candidate for candidate in candidates if id(candidate) not in dropped]
    info = {"rule": "each answer label capped at the count of the second commonest",
            "cap": cap, "before": {label: len(group) for label, group in labelled.items()},
            "after": {label: min(len(group), cap) for label, group in labelled.items()}}
    return kept, info


def curate(*, out_dir: Path, name: str, export_dir: Path | None = None,
           literature: Iterable[LiteratureSource] | None = None, literature_origin: str = "",
           limits: Limits | None = None, decontaminate: list[Path] | None = None,
           options: LiteratureOptions | None = None) -> CuratedSet:
    """Write sft.jsonl, dpo.jsonl and card.json into out_dir. Raises TrainingDataError.
    `decontaminate`: PubMedQA- or MIRAGE-format files whose questions (and PMIDs) are never
    trained on; default every evaluation suite's files (the review eval split always).
    `options`: how the literature set is built (training.literature.LiteratureOptions)."""
    options = options or LiteratureOptions()
    limits = limits or Limits()
    threshold = settings.EXPORT_NEAR_DUPLICATE_JACCARD
    benchmarks, pubmedqa_pmids, decontaminated = _decontamination(
        [Path(path) for path in decontaminate] if decontaminate else evaluation_files(),
        threshold)
    filters = _Filters(threshold=threshold, limits=limits, benchmarks=benchmarks,
                       pubmedqa_pmids=pubmedqa_pmids,
                       reviewed_eval=_reviewed_eval_index(threshold))
    export = _load_export(export_dir) if export_dir is not None else {}
    items = _review_items_by_key() if export else {}

    kept: dict[str, list[_Candidate]] = {"sft": [], "dpo": []}
    for fmt in ("sft", "dpo"):
        if fmt not in export:
            continue
        manifest, records = export[fmt]
        for candidate in _export_candidates(fmt, manifest, records, items, filters.dropped):
            try:
                reason = filters.reject_reason(candidate, fmt, phi=True)
            except PhiGateUnavailable as error:
                raise TrainingDataError(str(error)) from error
            if reason:
                filters.dropped[f"review: {reason} ({fmt})"] += 1
            else:
                kept[fmt].append(candidate)

    literature_info: dict[str, Any] = {}
    if literature is not None:
        clean: list[LiteratureSource] = []
        for source in literature:
            reason = filters.contamination(source.title.strip(), [source.pmid])
            if reason:
                filters.dropped[f"literature: {reason}"] += 1
            else:
                clean.append(source)
        examples, skipped = build_examples(clean, options)
        literature_info = {"origin": literature_origin, "examples_built": len(examples),
                           "articles_skipped": dict(sorted(skipped.items())),
                           "options": dataclasses.asdict(options)}
        for example in examples:
            candidate = _Candidate(
                source="literature", ident=f"pmid:{example.pmid}", question=example.question,
                prompt_text="\n".join(m["content"] for m in example.messages[:-1]),
                target=example.messages[-1]["content"], pmids=[example.pmid],
                record={"messages": example.messages}, label=example.label or "unlabelled")
            # Published abstracts, not patient records: the PHI gate is for clinicians' text.
            reason = filters.reject_reason(candidate, "sft", phi=False)
            if reason:
                filters.dropped[f"literature: {reason}"] += 1
            else:
                kept["sft"].append(candidate)
        if options.balance_labels:
            kept["sft"], balanced = balance_labels(kept["sft"])
            literature_info["balanced"] = balanced
            for label in ANSWER_LABELS:
                if balanced["before"][label] > balanced["after"][label]:
                    filters.dropped[f"literature: label balance ({label})"] += (
                        balanced["before"][label] - balanced["after"][label])

    if not kept["sft"] and not kept["dpo"]:
        raise TrainingDataError(
            "No training example is left after the filters ("
            + (", ".join(f"{reason}: {count}" for reason, count in
                         sorted(filters.dropped.items())) or "nothing to read")
            + "). Review and export more answers, or add the literature set.")

    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    lines: dict[str, list[dict[str, Any]]] = {}
    for fmt, candidates in kept.items():
        payload_lines = [canonical_line(_training_record(fmt, c)) for c in candidates]
        payload = b"".join(payload_lines)
        path = out_dir / f"{fmt}.jsonl"
        temporary = path.with_suffix(".jsonl.tmp")
        temporary.write_bytes(payload)
        temporary.replace(path)
        files[fmt] = {"file": path.name, "records": len(candidates), "sha256": _sha256(payload)}
        lines[fmt] = [{"line": number, "source": c.source, "id": c.ident,
                       "sha256": _sha256(line)}
                      for number, (c, line) in enumerate(zip(candidates, payload_lines,
                                                             strict=True), start=1)]
    literature_lines = [line for line in lines["sft"] if line["source"] == "literature"]
    literature_sha = _sha256(json.dumps(literature_lines, sort_keys=True).encode()) \
        if literature_lines else ""
    card = {
        "schema": CARD_SCHEMA,
        "name": name,
        "sources": {
            "export": ({"dir": str(export_dir),
                        "files": {fmt: {"file": manifest["file"], "sha256": manifest["sha256"],
                                        "records": manifest["records"],
                                        "split": manifest.get("split"),
                                        "counts": manifest.get("counts", {}),
                                        "model_versions": manifest.get("model_versions", []),
                                        "prompt_versions": manifest.get("prompt_versions", [])}
                                  for fmt, (manifest, _records) in sorted(export.items())}}
                       if export_dir is not None else None),
            "literature": literature_info or None,
        },
        "counts": {fmt: {"by_source": dict(sorted(Counter(c.source for c in kept[fmt]).items())),
                         "by_label": dict(sorted(Counter(c.label for c in kept[fmt]
                                                         if c.label).items()))}
                   for fmt in ("sft", "dpo")},
        "filtered": dict(sorted(filters.dropped.items())),
        "filters": {
            "limits": {"min_target_chars": limits.min_target_chars,
                       "max_target_chars": limits.max_target_chars,
                       "max_prompt_chars": limits.max_prompt_chars},
            "duplicates": {"method": "normalised text + token-set Jaccard",
                           "threshold": threshold},
            "decontamination": {"files": decontaminated,
                                "also": "review queue eval split questions"},
            "phi": "review.phi.scrub on reviewed questions and targets; literature exempt "
                   "(published abstracts)",
            "abstentions": "approved abstained or withheld drafts never become targets",
        },
        "files": files,
        "lines": lines,
    }
    card_bytes = json.dumps(card, indent=2, sort_keys=True).encode() + b"\n"
    (out_dir / "card.json").write_bytes(card_bytes)
    export_sha = export["sft"][0]["sha256"] if "sft" in export else (
        export["dpo"][0]["sha256"] if "dpo" in export else "")
    logger.info("training set %s: %d SFT, %d DPO examples", name, len(kept["sft"]),
                len(kept["dpo"]))
    return CuratedSet(path=out_dir, card=card, card_sha256=_sha256(card_bytes),
                      sft_records=len(kept["sft"]), dpo_records=len(kept["dpo"]),
                      export_sha256=export_sha, literature_sha256=literature_sha,
                      literature_examples=len(literature_lines))


def _training_record(fmt: str, candidate: _Candidate) -> dict[str, Any]:
    if fmt == "sft":
        return {"messages": candidate.record["messages"]}
    return {"prompt": candidate.record["prompt"], "chosen": candidate.record["chosen"],
            "rejected": candidate.record["rejected"]}
