"""The synthetic literature set, built the way PubMedQA's artificial set was built.

An article whose title is a question gives the question; its structured abstract without the
conclusion is the context; the conclusion, citing that article, is the grounded answer; a
yes/no/maybe label is added only where the conclusion decides it (a yes/no question, and a
conclusion that is plainly negative, plainly uncertain, or neither). The prompt is the product's
own answer prompt (numbered passages, the gold article among two others), and labelled examples
end with the PubMedQA* answer line the evaluation reads, so the model learns the format it is
scored on. Deterministic: the same articles give the same examples.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.extraction import ANSWER_LINE
from evaluation.harness import PUBMEDQA_TEXT_INSTRUCTION
from modelsvc.prompts import PromptPassage, build_answer_messages
from retrieval.models import Article
from retrieval.parsers import ParsedArticle, ReadReport, read_records

# Section labels that hold an abstract's conclusion (MEDLINE upper-cases them).
_CONCLUSION = re.compile(r"^(?:CONCLUSIONS?|INTERPRETATION|IMPLICATIONS?|SUMMARY AND CONCLUSIONS?"
                         r"|CONCLUSIONS? AND (?:RELEVANCE|IMPLICATIONS?|CLINICAL RELEVANCE)"
                         r"|CLINICAL RELEVANCE|MAIN CONCLUSIONS?)\b")
_YES_NO_QUESTION = re.compile(r"^(?:is|are|does|do|did|can|could|should|will|would|has|have|"
                              r"was|were|may|might|must)\b", re.IGNORECASE)
_WH_QUESTION = re.compile(r"^(?:what|how|which|why|when|where|who|whom|whose)\b", re.IGNORECASE)
_UNCERTAIN = re.compile(
    r"\b(?:unclear|uncertain|inconclusive|equivocal|conflicting|controversial|"
    r"not (?:yet )?(?:clear|known|established|certain)|remains? (?:unknown|to be (?:determined|"
    r"established|clarified|elucidated))|insufficient evidence|cannot be (?:determined|"
    r"concluded|excluded))\b", re.IGNORECASE)
_NEGATIVE = re.compile(
    r"\b(?:(?:did|does|do|was|were|is|are|has|have|could|can)\s+not|cannot|failed to|"
    r"(?:no|neither|nor|without|lack of)\s+(?:\w+\s+){0,3}?(?:significant|difference|"
    r"association|evidence|effect|benefit|advantage|improvement|increase|reduction|change|"
    r"correlation|relationship|impact|role|influence|value|superior))", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(])")

DISTRACTORS = 2
DISTRACTOR_CHARS = 900


GOLD_PASSAGES = ("context", "abstract")


@dataclass(frozen=True)
class LiteratureSource:
    pmid: str
    title: str
    sections: tuple[tuple[str, str], ...]
    expert_label: str | None = None  # a PubMedQA item's final_decision, where one was given


@dataclass(frozen=True)
class LiteratureOptions:
    """How the literature set is built (recorded in the data card).

    gold_passage: "context" = the abstract without its conclusion (PubMedQA's artificial set:
    the model must infer the conclusion); "abstract" = the whole abstract, as the index serves
    it, so every sentence of the target is in the passage it cites and the model learns to read
    the conclusion it is shown. expert_labels: where a PubMedQA-format source carries an expert
    final_decision, it is the label instead of the builder's reading of the conclusion (the
    builder agrees with the experts on about 64% of PubMedQA's items). balance_labels: cap
    each answer label at the count of the second commonest (training.curation)."""

    gold_passage: str = "context"
    expert_labels: bool = False
    balance_labels: bool = False

    def __post_init__(self) -> None:
        if self.gold_passage not in GOLD_PASSAGES:
            raise ValueError(f"gold_passage must be one of {', '.join(GOLD_PASSAGES)}, not "
                             f"{self.gold_passage!r}.")


@dataclass(frozen=True)
class LiteratureExample:
    pmid: str
    question: str
    context: str
    conclusion: str
    label: str | None  # yes / no / maybe, or None where the conclusion does not decide it
    messages: list[dict[str, Any]]


def is_question_title(title: str) -> bool:
    return title.strip().endswith("?")


def split_conclusion(sections: Iterable[tuple[str, str]]) -> tuple[str, str] | None:
    """(context, conclusion) of a structured abstract, or None without a conclusion section.
    The context is every section before the first conclusion section."""
    context: list[str] = []
    for index, (label, text) in enumerate(sections):
        if _CONCLUSION.match(label or ""):
            rest = [body for tag, body in list(sections)[index:] if _CONCLUSION.match(tag or "")]
            conclusion = " ".join(part.strip() for part in rest if part.strip())
            if not context or not conclusion:
                return None
            return "\n".join(context), conclusion
        if text.strip():
            context.append(f"{label}: {text.strip()}" if label else text.strip())
    return None


def decide_label(question: str, conclusion: str) -> str | None:
    """yes / no / maybe where the conclusion decides a yes/no question, else None."""
    question = question.strip()
    if _WH_QUESTION.match(question) or not (_YES_NO_QUESTION.match(question) or ":" in question):
        return None
    uncertain = bool(_UNCERTAIN.search(conclusion))
    negative = bool(_NEGATIVE.search(conclusion))
    if uncertain and negative:
        return None
    if uncertain:
        return "maybe"
    if negative:
        return "no"
    return "yes"


def cite_sentences(text: str, number: int) -> str:
    """Every sentence of the conclusion followed by its citation, as the answer prompt asks."""
    sentences = [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]
    cited = []
    for sentence in sentences:
        match = re.match(r"^(.*?)([.!?]*)$", sentence, re.DOTALL)
        body, stop = (match.group(1), match.group(2)) if match else (sentence, "")
        cited.append(f"{body} [{number}]{stop or '.'}")
    return " ".join(cited)


def _rank(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def build_examples(sources: Iterable[LiteratureSource],
                   options: LiteratureOptions | None = None
                   ) -> tuple[list[LiteratureExample], dict[str, int]]:
    """Examples from every usable source, and counts of what was skipped and why."""
    options = options or LiteratureOptions()
    skipped: dict[str, int] = {}
    usable: list[tuple[LiteratureSource, str, str]] = []
    for source in sources:
        if not is_question_title(source.title):
            skipped["title is not a question"] = skipped.get("title is not a question", 0) + 1
            continue
        parts = split_conclusion(source.sections)
        if parts is None:
            skipped["no conclusion section"] = skipped.get("no conclusion section", 0) + 1
            continue
        usable.append((source, *parts))
    # A fixed shuffle: each article's distractors are the next ones in it (two other articles'
    # contexts), and the gold passage sits at a fixed but varied number, so the model learns to
    # cite the passage that answers.
    usable.sort(key=lambda entry: (_rank(entry[0].pmid), entry[0].pmid))
    examples = []
    for position, (source, context, conclusion) in enumerate(usable):
        others = [usable[(position + step) % len(usable)]
                  for step in range(1, min(DISTRACTORS, len(usable) - 1) + 1)]
        gold_number = _rank(source.pmid) % (len(others) + 1) + 1
        passages, number = [], 1
        for other in others:
            if number == gold_number:
                number += 1
            passages.append(PromptPassage(number=number, pmid=other[0].pmid,
                                          title=other[0].title,
                                          text=other[1][:DISTRACTOR_CHARS]))
            number += 1
        gold_text = (context if options.gold_passage == "context" else
                     f"{context}\nCONCLUSIONS: {conclusion}")
        passages.append(PromptPassage(number=gold_number, pmid=source.pmid, title=source.title,
                                      text=gold_text))
        passages.sort(key=lambda passage: passage.number)
        label = (source.expert_label if options.expert_labels and source.expert_label else
                 decide_label(source.title, conclusion))
        messages = build_answer_messages(source.title.strip(), passages)
        answer = cite_sentences(conclusion, gold_number)
        if label:
            messages[-1] = {**messages[-1],
                            "content": f"{messages[-1]['content']}\n\n{PUBMEDQA_TEXT_INSTRUCTION}"}
            answer = f"{answer}\n{ANSWER_LINE} {label}"
        messages.append({"role": "assistant", "content": answer})
        examples.append(LiteratureExample(pmid=source.pmid, question=source.title.strip(),
                                          context=context, conclusion=conclusion, label=label,
                                          messages=messages))
    examples.sort(key=lambda example: example.pmid)
    return examples, skipped


def sources_from_index(collection: str | None = None) -> Iterator[LiteratureSource]:
    """Articles of the indexed corpus whose title is a question (the database's copy)."""
    articles = Article.objects.filter(title__endswith="?", retracted=False)
    if collection:
        articles = articles.filter(collection=collection)
    for pmid, title, sections in articles.order_by("pmid").values_list(
            "pmid", "title", "abstract_sections").iterator(chunk_size=500):
        yield LiteratureSource(pmid=pmid, title=title,
                               sections=tuple((str(label), str(text)) for label, text in sections))


def sources_from_files(paths: Iterable[Path]) -> Iterator[LiteratureSource]:
    """The same from PubMed XML / JSONL / PubMedQA JSON files read in place (no index needed),
    for benches. A PubMedQA item's QUESTION is its title (the question its authors' title asked),
    CONTEXTS its context and LONG_ANSWER its conclusion; its final_decision is carried as
    `expert_label`, used only with LiteratureOptions(expert_labels=True)."""
    for path in paths:
        report = ReadReport()
        name = Path(path).name
        fmt = "pubmedqa" if name.endswith(".json") else "pubmed-xml" if ".xml" in name else "jsonl"
        questions, decisions = (_pubmedqa_questions(Path(path)) if fmt == "pubmedqa" else
                                ({}, {}))
        for record in read_records(Path(path), fmt, report):
            if not isinstance(record, ParsedArticle) or record.retracted:
                continue
            title = questions.get(record.pmid, "") if fmt == "pubmedqa" else record.title
            if is_question_title(title):
                yield LiteratureSource(pmid=record.pmid, title=title,
                                       sections=tuple(record.sections),
                                       expert_label=decisions.get(record.pmid))


def _pubmedqa_questions(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    # The index reader leaves PubMedQA titles empty (QUESTION would leak evaluation queries into
    # the documents); here the question is the point, so it is read beside the records, with
    # the experts' final_decision.
    items = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(items, dict):
        return {}, {}
    questions = {str(pmid): str(item.get("QUESTION") or "") for pmid, item in items.items()
                 if isinstance(item, dict)}
    decisions = {str(pmid): str(item["final_decision"]).strip().lower()
                 for pmid, item in items.items()
                 if isinstance(item, dict) and str(item.get("final_decision") or "").strip()
                 .lower() in ("yes", "no", "maybe")}
    return questions, decisions
