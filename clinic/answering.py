"""The answering pipeline: the one path from a question to a verified, cited answer.

    route -> retrieve -> fit to the token budget -> store the passages shown -> build the prompt
    -> one metered model call -> verify claims -> store

Every caller goes through these stages, so the model reads the same messages for a question
whoever asks it: the quick answer (`clinic.quick`) streams the call, the deep consult
(`clinic.deep`) runs the stages per sub-question and for the synthesis, and the evaluation
harness (`evaluation.harness`) answers benchmark questions with `answer_question`, keeping the
passages in memory instead of storing them on a consultation.

How many passages are retrieved, shown and prompted are settings
(ANSWER_PASSAGES_RETRIEVED >= ANSWER_PASSAGES_SHOWN >= ANSWER_PASSAGES_PROMPTED).

What verification decides (`verify_answer`):
- each claim gets a verdict against the passages it cites (supported / contradicted / not found,
  with the passage that decided it), from `modelsvc.verification.score_claims`;
- a retracted passage (there only when the clinician asked to include retracted articles) is
  no evidence either way: claims are judged against the cited passages that are not retracted,
  so a claim citing only retracted ones is not found;
- the answer is withheld (`Verification.withheld_reason`) when it is empty, when it repeats
  instructions found inside a passage, when any claim is contradicted by a passage it cites
  (every claim is key: a clinician may act on any sentence, so one that its own citation
  contradicts makes the whole answer unsafe to show), or when too few claims are supported
  (`should_abstain`). A withheld answer's draft is stored for reviewers and never shown to the
  clinician (`clinic.selectors.consultation_snapshot`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from clinic.models import Claim, Consultation, RetrievedPassage
from clinic.signals import answer_finished
from modelsvc.accounting import MeteredCall, MeteredResult, metered_chat, metered_stream
from modelsvc.citations import ParsedClaim, parse_answer
from modelsvc.client import TextDelta
from modelsvc.models import ServedModel
from modelsvc.prompts import (
    PROMPT_VERSION,
    PromptPassage,
    build_answer_messages,
    build_no_retrieval_messages,
)
from modelsvc.router import RoutingDecision, route
from modelsvc.tokens import count_tokens, fit_passages
from modelsvc.verification import (
    CONTRADICTED,
    NOT_FOUND,
    ClaimSupport,
    check_injection,
    score_claims,
    should_abstain,
    support_rate,
)
from retrieval.embedding import embed_query, embed_texts
from retrieval.search import Hit, SearchFilters, SearchResult, search

RETRIEVAL_MODE = "hybrid+rerank"


# --- what flows between the stages ------------------------------------------------------------

@dataclass(frozen=True)
class Passage:
    """A numbered passage: the model cites it as [number], the clinician reads it in full."""

    number: int
    pmid: str
    title: str
    text: str
    chunk_id: int | None = None
    journal: str = ""
    year: int | None = None
    publication_types: tuple[str, ...] = ()
    retracted: bool = False
    section: str = ""
    score: float = 0.0
    stages: Mapping[str, int] = field(default_factory=dict)
    sub_question: int | None = None
    retraction_notice_pmid: str = ""

    @classmethod
    def from_hit(cls, number: int, hit: Hit, *, sub_question: int | None = None) -> Passage:
        return cls(number=number, pmid=hit.pmid, title=hit.title, text=hit.text,
                   chunk_id=hit.chunk_id, journal=hit.journal, year=hit.year,
                   publication_types=tuple(hit.publication_types), retracted=hit.retracted,
                   section=hit.section, score=float(hit.score), stages=dict(hit.stages),
                   sub_question=sub_question, retraction_notice_pmid=hit.retraction_notice_pmid)

    @classmethod
    def from_row(cls, row: RetrievedPassage) -> Passage:
        return cls(number=row.rank, pmid=row.pmid, title=row.title, text=row.text,
                   chunk_id=row.chunk_id, journal=row.journal, year=row.year,
                   publication_types=tuple(row.publication_types), retracted=row.retracted,
                   section=row.section, score=row.score, stages=dict(row.stages),
                   sub_question=row.sub_question,
                   retraction_notice_pmid=row.retraction_notice_pmid)

    def for_prompt(self) -> PromptPassage:
        return PromptPassage(number=self.number, pmid=self.pmid, title=self.title,
                             text=self.text, retracted=self.retracted,
                             retraction_notice_pmid=self.retraction_notice_pmid)


@dataclass(frozen=True)
class ModelChoice:
    """The model an answer is asked of: the `model` value sent, and its registry row if any."""

    model_name: str
    served_model: ServedModel | None = None


@dataclass(frozen=True)
class FittedPassages:
    """`shown` is what is stored and shown; `prompted` (a prefix of it, the last one possibly
    cut short) is what fits the model's context."""

    shown: list[Passage]
    prompted: list[PromptPassage]


@dataclass
class PreparedAnswer:
    """Everything up to the model call: the messages, and the passages they number."""

    question: str
    patient_note: str
    model: ModelChoice
    decision: RoutingDecision | None
    use_retrieval: bool
    retrieved: list[Hit]
    passages: list[Passage]
    prompted: list[PromptPassage]
    messages: list[dict[str, Any]]
    max_tokens: int
    response_format: dict[str, Any] | None
    index_version: str
    timings: dict[str, float]


# Why an answer is withheld; the values of Consultation.WithheldReason.
WITHHELD_EMPTY = "empty"
WITHHELD_INJECTION = "injection"
WITHHELD_CONTRADICTED = "contradicted"
WITHHELD_LOW_SUPPORT = "low_support"


@dataclass(frozen=True)
class Verification:
    """Each claim of an answer with its support, and what the answer as a whole amounts to.

    `abstain` is True exactly when `withheld_reason` is set: the draft is not shown."""

    claims: list[ParsedClaim]
    supports: list[ClaimSupport]
    removed_citations: int
    injected: bool
    abstain: bool
    support_rate: float | None
    cited_numbers: list[int]
    cited_pmids: list[str]
    # Citation precision counts every (claim, cited passage) pair: only with per_citation=True.
    cited_passages: int | None = None
    supporting_citations: int | None = None
    withheld_reason: str = ""

    @property
    def supported(self) -> int:
        return sum(1 for support in self.supports if support.supported)

    @property
    def contradicting_passages(self) -> list[int]:
        return sorted({support.passage for support in self.supports
                       if support.verdict == CONTRADICTED and support.passage is not None})

    def claim_rows(self) -> list[dict[str, Any]]:
        return [{"text": claim.text, "citations": list(claim.citations),
                 "support_score": support.score, "supported": support.supported,
                 "verdict": support.verdict, "passage": support.passage}
                for claim, support in zip(self.claims, self.supports, strict=True)]


@dataclass(frozen=True)
class Answer:
    """A question answered without a consultation (the evaluation's case)."""

    prepared: PreparedAnswer
    metered: MeteredResult
    verification: Verification

    @property
    def text(self) -> str:
        return self.metered.result.text


# --- the stages -------------------------------------------------------------------------------

def store_route(consultation: Consultation, decision: RoutingDecision, *,
                follow_retrieval: bool = True) -> list[str]:
    """Put the routing decision on the consultation (unsaved); returns the fields it set.

    A deep consult always searches, so it does not take the router's retrieval advice.
    """
    consultation.routed_capability = decision.capability
    consultation.routed_model = decision.served_model
    consultation.routed_model_name = decision.model_name
    consultation.routing_confidence = decision.confidence
    consultation.routing_fallback = decision.fallback
    fields = ["routed_capability", "routed_model", "routed_model_name", "routing_confidence",
              "routing_fallback"]
    if follow_retrieval:
        consultation.use_retrieval = decision.use_retrieval
        consultation.suggested_deep = decision.deep
        fields += ["use_retrieval", "suggested_deep"]
    return fields


def retrieve(query: str, *, k: int | None = None, query_embedding: np.ndarray | None = None,
             filters: SearchFilters | None = None) -> SearchResult:
    """Hybrid search with reranking; retracted articles are left out unless filters say so."""
    return search(query, k=settings.ANSWER_PASSAGES_RETRIEVED if k is None else k,
                  mode=RETRIEVAL_MODE, filters=filters or SearchFilters(exclude_retracted=True),
                  query_embedding=query_embedding)


def fit(question: str, candidates: Sequence[Passage], *, max_tokens: int,
        patient_note: str = "", instruction: str = "", extra_tokens: int = 0,
        shown: int | None = None, prompted: int | None = None) -> FittedPassages:
    """The passages to show and to prompt with, within the model's context window.

    The completion is given room for the larger of `max_tokens` and ANSWER_MAX_TOKENS, so a
    caller that caps the answer shorter still gets the clinician's passages. Raises
    PromptTooLongError when the question alone does not fit.
    """
    shown = settings.ANSWER_PASSAGES_SHOWN if shown is None else shown
    prompted = min(settings.ANSWER_PASSAGES_PROMPTED if prompted is None else prompted, shown)
    kept = list(candidates)[:shown]
    window = kept[:prompted]
    reserve = (max(max_tokens, settings.ANSWER_MAX_TOKENS) + extra_tokens
               + (count_tokens(instruction) if instruction else 0))
    fitted = fit_passages(question, [p.for_prompt() for p in window],
                          max_completion_tokens=reserve, patient_note=patient_note)
    if len(fitted) < len(window):
        # The context ran out: what lies beyond it was not read, so it is not shown either.
        kept = kept[:len(fitted)]
    return FittedPassages(shown=kept, prompted=fitted)


def store_passages(consultation: Consultation, passages: Sequence[Passage], *,
                   replace: bool = False) -> list[RetrievedPassage]:
    """Store exactly these passages under their numbers; `replace` drops an earlier attempt's."""
    if replace:
        consultation.passages.all().delete()
    return RetrievedPassage.objects.bulk_create([
        RetrievedPassage(
            consultation=consultation, rank=p.number, chunk_id=p.chunk_id, pmid=p.pmid,
            title=p.title, journal=p.journal[:400], year=p.year,
            publication_types=list(p.publication_types), retracted=p.retracted,
            retraction_notice_pmid=p.retraction_notice_pmid[:20],
            section=p.section[:100], text=p.text, score=p.score, stages=dict(p.stages),
            sub_question=p.sub_question)
        for p in passages])


def stored_passages(consultation_id: int) -> list[Passage]:
    return [Passage.from_row(row) for row in
            RetrievedPassage.objects.filter(consultation_id=consultation_id).order_by("rank")]


def build_messages(question: str, prompted: Sequence[PromptPassage], *, patient_note: str = "",
                   instruction: str = "") -> list[dict[str, Any]]:
    """The answer prompt; without passages, the general-knowledge one. `instruction` (an
    answer format, for a benchmark) ends the user's message."""
    if prompted:
        messages = build_answer_messages(question, list(prompted), patient_note=patient_note)
    else:
        messages = build_no_retrieval_messages(question, patient_note=patient_note)
    if instruction:
        messages[-1] = {**messages[-1], "content": f"{messages[-1]['content']}\n\n{instruction}"}
    return messages


def prepare_answer(question: str, *, patient_note: str = "",
                   consultation: Consultation | None = None, model: ModelChoice | None = None,
                   use_retrieval: bool | None = None, retrieved: int | None = None,
                   shown: int | None = None, prompted: int | None = None,
                   max_tokens: int | None = None, instruction: str = "",
                   response_format: dict[str, Any] | None = None,
                   include_retracted: bool = False) -> PreparedAnswer:
    """Route, retrieve, fit, store the passages shown (with a consultation), build the prompt.

    `model` given: no routing, that model answers (an evaluation's candidate). `use_retrieval`
    None: as the router advises (always, when the model is given). `include_retracted`: the
    clinician asked for retracted articles too; the prompt marks them retracted.
    """
    max_tokens = settings.ANSWER_MAX_TOKENS if max_tokens is None else max_tokens
    timings: dict[str, float] = {}
    query_embedding: np.ndarray | None = None
    decision: RoutingDecision | None = None
    if model is None or use_retrieval is not False:
        started = time.monotonic()
        query_embedding = embed_query(question)
        timings["embed_ms"] = (time.monotonic() - started) * 1000
    if model is None:
        started = time.monotonic()
        decision = route(question, query_embedding)
        timings["route_ms"] = (time.monotonic() - started) * 1000
        model = ModelChoice(decision.model_name, decision.served_model)
        if use_retrieval is None:
            use_retrieval = decision.use_retrieval
    use_retrieval = use_retrieval is not False

    hits: list[Hit] = []
    index_version = ""
    if use_retrieval:
        started = time.monotonic()
        result = retrieve(question, k=retrieved, query_embedding=query_embedding,
                          filters=SearchFilters(exclude_retracted=not include_retracted))
        timings["retrieve_ms"] = (time.monotonic() - started) * 1000
        timings.update({f"retrieve_{name}": ms for name, ms in result.timings_ms.items()})
        hits, index_version = result.hits, result.index_version
    started = time.monotonic()
    candidates = [Passage.from_hit(number, hit) for number, hit in enumerate(hits, start=1)]
    fitted = fit(question, candidates, max_tokens=max_tokens, patient_note=patient_note,
                 instruction=instruction, shown=shown, prompted=prompted)
    timings["fit_ms"] = (time.monotonic() - started) * 1000
    started = time.monotonic()
    messages = build_messages(question, fitted.prompted, patient_note=patient_note,
                              instruction=instruction)
    timings["prompt_ms"] = (time.monotonic() - started) * 1000
    timings = {name: round(ms, 1) for name, ms in timings.items()}
    prepared = PreparedAnswer(
        question=question, patient_note=patient_note, model=model, decision=decision,
        use_retrieval=use_retrieval, retrieved=hits, passages=fitted.shown,
        prompted=fitted.prompted, messages=messages, max_tokens=max_tokens,
        response_format=response_format, index_version=index_version, timings=timings)
    if consultation is not None:
        store_prepared(consultation, prepared)
    return prepared


def store_prepared(consultation: Consultation, prepared: PreparedAnswer) -> None:
    """Store the routing decision, versions, timings and the passages shown (replacing an
    earlier attempt's). A caller that must hold a claim calls it in its own transaction."""
    with transaction.atomic():
        fields = store_route(consultation, prepared.decision) if prepared.decision else []
        if prepared.use_retrieval:
            consultation.index_version = prepared.index_version
            fields.append("index_version")
        consultation.prompt_version = PROMPT_VERSION
        consultation.stage_timings = prepared.timings
        consultation.save(update_fields=[*fields, "prompt_version", "stage_timings",
                                         "updated_at"])
        store_passages(consultation, prepared.passages, replace=True)


def _meter(prepared: PreparedAnswer, purpose: str, consultation_id: int | None) -> MeteredCall:
    return MeteredCall(model_name=prepared.model.model_name, purpose=purpose,
                       served_model=prepared.model.served_model,
                       consultation_id=consultation_id)


def complete_answer(prepared: PreparedAnswer, *, purpose: str,
                    consultation_id: int | None = None) -> MeteredResult:
    """The model call, in one piece, recorded."""
    return metered_chat(prepared.messages, meter=_meter(prepared, purpose, consultation_id),
                        max_tokens=prepared.max_tokens,
                        response_format=prepared.response_format)


def stream_answer(prepared: PreparedAnswer, *, purpose: str, consultation_id: int | None = None,
                  ) -> AsyncIterator[TextDelta | MeteredResult]:
    """The model call, streamed: text deltas, then the recorded MeteredResult."""
    return metered_stream(prepared.messages, meter=_meter(prepared, purpose, consultation_id),
                          max_tokens=prepared.max_tokens,
                          response_format=prepared.response_format)


def _evidence(passages: Sequence[Passage]) -> dict[int, str]:
    """The passages a claim may be judged against: a retracted article is no evidence."""
    return {p.number: p.text for p in passages if not p.retracted}


def _judged(claims: Sequence[ParsedClaim], passages: Sequence[Passage]) -> list[ClaimSupport]:
    """score_claims against the passages that are evidence; a claim citing only retracted
    passages is not found, whatever they say."""
    if not claims:
        return []
    retracted = {p.number for p in passages if p.retracted}
    evidence = _evidence(passages)
    judged = [ParsedClaim(claim.text, [n for n in claim.citations if n not in retracted])
              for claim in claims]
    supports = score_claims(judged, evidence, embed=embed_texts)
    return [ClaimSupport(0.0, False, None, "cites only retracted articles", NOT_FOUND)
            if claim.citations and not scored.citations else support
            for claim, scored, support in zip(claims, judged, supports, strict=True)]


def withheld_reason(text: str, claims: Sequence[ParsedClaim], supports: Sequence[ClaimSupport],
                    *, injected: bool, require_citations: bool = True) -> str:
    """Why the answer must not be shown, or "" when it may be. See the module's docstring."""
    if not text.strip():
        return WITHHELD_EMPTY
    if injected:
        return WITHHELD_INJECTION
    if any(support.verdict == CONTRADICTED for support in supports):
        return WITHHELD_CONTRADICTED
    if should_abstain(claims, supports, require_citations=require_citations):
        return WITHHELD_LOW_SUPPORT
    return ""


@dataclass(frozen=True)
class SentenceCheck:
    """One sentence of a streaming answer, checked on its own before it is released."""

    claim: ParsedClaim
    support: ClaimSupport
    injected: bool

    @property
    def releasable(self) -> bool:
        return self.support.supported and not self.injected

    @property
    def withholds(self) -> bool:
        """Whatever follows, the answer will be withheld."""
        return self.injected or self.support.verdict == CONTRADICTED


def check_sentence(claim: ParsedClaim, passages: Sequence[Passage]) -> SentenceCheck:
    """The same checks as verify_answer, for one complete sentence of a streaming answer."""
    (support,) = _judged([claim], passages)
    injected = check_injection(claim.text, [p.text for p in passages])
    return SentenceCheck(claim=claim, support=support, injected=injected)


def verify_answer(text: str, passages: Sequence[Passage], *, require_citations: bool = True,
                  per_citation: bool = False) -> Verification:
    """Score each claim against the passages it cites; decide whether to withhold the answer.

    `require_citations=False` is the no-retrieval path, whose answers cannot cite.
    `per_citation` also checks every (claim, cited passage) pair on its own, for citation
    precision.
    """
    numbers = {p.number for p in passages}
    parsed = parse_answer(text, max(numbers) if numbers else 0)
    supports = _judged(parsed.claims, passages)
    cited = sorted({n for claim in parsed.claims for n in claim.citations if n in numbers})
    cited_passages = supporting_citations = None
    if per_citation:
        pairs = [ParsedClaim(claim.text, [n]) for claim in parsed.claims
                 for n in claim.citations if n in numbers]
        pair_supports = _judged(pairs, passages)
        cited_passages = len(pairs)
        supporting_citations = sum(1 for support in pair_supports if support.supported)
    injected = check_injection(text, [p.text for p in passages])
    cited_set = set(cited)
    reason = withheld_reason(text, parsed.claims, supports, injected=injected,
                             require_citations=require_citations)
    return Verification(
        claims=list(parsed.claims), supports=supports,
        removed_citations=parsed.removed_citations, injected=injected, abstain=bool(reason),
        support_rate=support_rate(supports), cited_numbers=cited,
        cited_pmids=sorted({p.pmid for p in passages if p.number in cited_set}),
        cited_passages=cited_passages, supporting_citations=supporting_citations,
        withheld_reason=reason)


def finalize_answer(consultation: Consultation, text: str, passages: Sequence[Passage], *,
                    verification: Verification | None = None) -> Consultation:
    """Verify the answer against the passages shown and store it with its claims and verdicts;
    a withheld answer is stored too (reviewers read it), with why it was withheld.

    `verification`: already done by the caller (`verify_answer` of the same text and passages),
    so that a caller holding a claim keeps its transaction short."""
    if verification is None:
        verification = verify_answer(text, passages,
                                     require_citations=consultation.use_retrieval)
    supports = verification.supports
    with transaction.atomic():
        consultation.claims.all().delete()
        Claim.objects.bulk_create([
            Claim(consultation=consultation, position=index, text=claim.text,
                  citations=list(claim.citations), support_score=supports[index].score,
                  supported=supports[index].supported, verdict=supports[index].verdict,
                  passage=supports[index].passage)
            for index, claim in enumerate(verification.claims)
        ])
        consultation.answer_text = text
        consultation.abstained = verification.abstain
        consultation.withheld_reason = verification.withheld_reason
        consultation.support_rate = verification.support_rate
        consultation.removed_citations = verification.removed_citations
        consultation.status = Consultation.Status.COMPLETE
        consultation.completed_at = timezone.now()
        consultation.save(update_fields=[
            "answer_text", "abstained", "withheld_reason", "support_rate", "removed_citations",
            "status", "completed_at", "updated_at"])
    answer_finished.send(sender=Consultation, consultation_id=consultation.pk)
    return consultation


def answer_question(question: str, *, model: ModelChoice, purpose: str,
                    use_retrieval: bool = True, retrieved: int | None = None,
                    shown: int | None = None, prompted: int | None = None,
                    max_tokens: int | None = None, instruction: str = "",
                    response_format: dict[str, Any] | None = None,
                    verify_text: Callable[[str], str] | None = None) -> Answer:
    """The whole pipeline for a question without a consultation: nothing but the model call is
    stored. `verify_text(answer_text)` picks the part of the reply to verify (e.g. without a
    benchmark's answer line)."""
    prepared = prepare_answer(question, model=model, use_retrieval=use_retrieval,
                              retrieved=retrieved, shown=shown, prompted=prompted,
                              max_tokens=max_tokens, instruction=instruction,
                              response_format=response_format)
    metered = complete_answer(prepared, purpose=purpose)
    text = verify_text(metered.result.text) if verify_text else metered.result.text
    verification = verify_answer(text, prepared.passages, per_citation=True)
    return Answer(prepared=prepared, metered=metered, verification=verification)
