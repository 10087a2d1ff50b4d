"""The evaluation suites: what each one asks, under which conditions, read from which data.

Data files are third-party reference data read in place (LITERATURE_DATA_DIR); any file in the
same format can be passed instead. Every suite's items are deterministic for a given file and
limit, so a resumed run finds exactly the questions it started with.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any

from django.conf import settings

from evaluation.items import EvalError, EvalItem
from evaluation.reviewed import held_out_items
from modelsvc.claim_changes import ClaimsFileError, read_claims_file
from modelsvc.models import RouterVersion
from modelsvc.router_training import question_fingerprint, training_split_of

RETRIEVAL = "retrieval"
NO_RETRIEVAL = "no_retrieval"
ROUTING = "routing"
VERIFICATION = "verification"

PUBMEDQA_DECISIONS = ("yes", "no", "maybe")


@dataclass(frozen=True)
class Suite:
    name: str
    conditions: tuple[str, ...]
    capability: str  # the registry capability whose serving model is the default
    uses_model: bool
    default_files: tuple[str, ...]  # relative to LITERATURE_DATA_DIR


SUITES: dict[str, Suite] = {
    "pubmedqa": Suite("pubmedqa", (RETRIEVAL,), "literature", True,
                      ("pubmedqa/pqal_dev.json",)),
    "mirage": Suite("mirage", (RETRIEVAL, NO_RETRIEVAL), "knowledge", True,
                    ("exam/mirage_medmcqa_mmlu.json",)),
    "reviewed": Suite("reviewed", (RETRIEVAL,), "literature", True, ()),
    "router": Suite("router", (ROUTING,), "literature", False,
                    ("pubmedqa/pqal_dev.json", "exam/mirage_medmcqa_mmlu.json")),
    # Claim/passage pairs judged by the claim check; build a file with `manage.py build_claims`.
    "claims": Suite("claims", (VERIFICATION,), "literature", False, ()),
}


def get_suite(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise EvalError(f"Unknown suite {name!r}; use one of {', '.join(SUITES)}.") from None


def default_paths(suite: Suite) -> list[Path]:
    return [Path(settings.LITERATURE_DATA_DIR) / name for name in suite.default_files]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_fingerprint(paths: Sequence[Path]) -> str:
    """One file: its SHA-256. Several: the SHA-256 of their names' and hashes' list."""
    if len(paths) == 1:
        return file_sha256(paths[0])
    lines = "\n".join(f"{path.name}:{file_sha256(path)}" for path in paths)
    return hashlib.sha256(lines.encode()).hexdigest()


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalError(f"Data file {path} does not exist; pass --data with a file in the "
                        "suite's format, or set LITERATURE_DATA_DIR.") from None
    except (OSError, ValueError) as error:
        raise EvalError(f"Cannot read {path} as JSON ({error}).") from error


def file_format(data: Any) -> str:
    """'pubmedqa' (dict keyed by PMID with QUESTION) or 'mirage' (subsets of questions)."""
    if isinstance(data, dict) and data:
        first = next(iter(data.values()))
        if isinstance(first, dict) and "QUESTION" in first:
            return "pubmedqa"
        if isinstance(first, dict) and first:
            inner = next(iter(first.values()))
            if isinstance(inner, dict) and "question" in inner and "options" in inner:
                return "mirage"
    raise EvalError("The data file is neither PubMedQA format (an object keyed by PMID with "
                    "QUESTION and final_decision) nor MIRAGE format ({subset: {id: {question, "
                    "options, answer}}}).")


def pubmedqa_items(data: dict[str, Any]) -> list[EvalItem]:
    items = []
    for pmid, entry in data.items():
        decision = str(entry.get("final_decision", "")).strip().lower()
        question = str(entry.get("QUESTION", "")).strip()
        if not question or decision not in PUBMEDQA_DECISIONS:
            continue
        items.append(EvalItem(item_id=str(pmid), question=question, gold=decision,
                              subset=decision, gold_pmids=(str(pmid),)))
    return items


def mirage_items(data: dict[str, Any]) -> list[EvalItem]:
    """Subsets interleaved (one of each in turn), so a --limit run still covers every subset."""
    per_subset: list[list[EvalItem]] = []
    for subset, questions in data.items():
        rows = []
        for qid, entry in questions.items():
            options = {str(k): str(v) for k, v in dict(entry.get("options") or {}).items()}
            answer = str(entry.get("answer", "")).strip()
            if not entry.get("question") or answer not in options:
                continue
            rows.append(EvalItem(item_id=f"{subset}:{qid}"[:64], question=str(entry["question"]),
                                 gold=answer, subset=str(subset)[:32], options=options))
        per_subset.append(rows)
    return [item for group in zip_longest(*per_subset) for item in group if item is not None]


def router_items(paths: Sequence[Path]) -> list[EvalItem]:
    """PubMedQA questions are literature questions, MIRAGE questions knowledge ones;
    alternated so a --limit run is balanced."""
    literature: list[EvalItem] = []
    knowledge: list[EvalItem] = []
    for path in paths:
        data = read_json(path)
        if file_format(data) == "pubmedqa":
            literature += [EvalItem(item_id=f"pubmedqa:{item.item_id}"[:64],
                                    question=item.question, gold="literature",
                                    subset="literature") for item in pubmedqa_items(data)]
        else:
            knowledge += [EvalItem(item_id=item.item_id, question=item.question,
                                   gold="knowledge", subset="knowledge")
                          for item in mirage_items(data)]
    return [item for pair in zip_longest(literature, knowledge) for item in pair
            if item is not None]


def unseen_by_router(items: list[EvalItem]) -> list[EvalItem]:
    """The items whose question the active router never trained on: scoring a classifier on
    its own training questions measures its memory, not its routing."""
    active = RouterVersion.objects.filter(active=True).first()
    if active is None:
        return items  # no trained router: the fallback rule learnt from nothing
    seen = training_split_of(active)
    if seen is None:
        raise EvalError(f"The active router {active.version} was trained before routers kept "
                        "their training split, so the router suite cannot leave out the "
                        "questions it learnt from. Retrain it: `python manage.py train_router`.")
    unseen = [item for item in items if question_fingerprint(item.question) not in seen]
    if items and not unseen:
        raise EvalError(f"Every question in the data was in the training split of router "
                        f"{active.version}; evaluate it on other questions (--data).")
    return unseen


def reviewed_items(limit: int | None) -> tuple[list[EvalItem], str, str]:
    """Items from the review queue's held-out evaluation split; (items, source, fingerprint)."""
    # reviewed builds its items from this module's EvalItem, so it loads after this one.

    items, source = held_out_items()
    if limit:
        items = items[:limit]
    payload = json.dumps([[i.item_id, i.question, i.gold, i.reference] for i in items],
                         sort_keys=True, default=str)
    return items, source, hashlib.sha256(payload.encode()).hexdigest()


def claim_items(paths: Sequence[Path]) -> list[EvalItem]:
    """One item per line of claims JSON Lines files: the claim, its label and kind; the
    passage rides in `reference`."""
    if not paths:
        raise EvalError("The claims suite needs --data FILE.jsonl; build one with `python "
                        "manage.py build_claims --source pubmedqa --out FILE.jsonl`.")
    items = []
    for path in paths:
        try:
            pairs = read_claims_file(path)
        except ClaimsFileError as error:
            raise EvalError(str(error)) from error
        prefix = f"{path.stem}:" if len(paths) > 1 else ""
        items += [EvalItem(item_id=f"{prefix}{number}"[:64], question=pair.claim, gold=pair.label,
                           subset=pair.kind[:32],
                           reference={"passage": pair.passage, "source": pair.source})
                  for number, pair in enumerate(pairs, start=1)]
    return items


def load_items(suite: Suite, paths: Sequence[Path], limit: int | None) -> list[EvalItem]:
    if suite.name == "reviewed":
        return reviewed_items(limit)[0]
    if suite.name == "router":
        items = unseen_by_router(router_items(paths))
    elif suite.name == "claims":
        items = claim_items(paths)
    else:
        if len(paths) != 1:
            raise EvalError(f"The {suite.name} suite reads one data file; got {len(paths)}.")
        data = read_json(paths[0])
        kind = file_format(data)
        if kind != ("pubmedqa" if suite.name == "pubmedqa" else "mirage"):
            raise EvalError(f"{paths[0]} is a {kind} file; the {suite.name} suite needs a "
                            f"{'PubMedQA' if suite.name == 'pubmedqa' else 'MIRAGE'} file.")
        items = pubmedqa_items(data) if kind == "pubmedqa" else mirage_items(data)
    if not items:
        raise EvalError(f"No usable questions in {', '.join(map(str, paths))}.")
    return items[:limit] if limit else items
