"""Run a suite: create the run with everything that identifies it, answer its questions
concurrently against the model server, store one row per question, compute the figures.

Every question is answered by clinic's answering pipeline (`clinic.answering`), the one the
clinician's quick answer runs: same retrieval, passages and prompt; a benchmark only adds its
answer-format instruction, and names the model under evaluation instead of routing.

A run is resumable: rows already stored are never answered again, so an interrupted run (a
killed command, a lost worker, a model server that went away) continues where it stopped.
Questions run in threads (the model server batches them); rows are written by the calling
thread only.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.db import IntegrityError, close_old_connections, connection
from django.db.models import Q
from django.utils import timezone

from clinic.answering import Answer, ModelChoice, answer_question
from evaluation import suites
from evaluation.claims import answer_claim, run_claim_metrics
from evaluation.extraction import (
    ANSWER_LINE,
    parse_choice,
    parse_structured,
    split_answer_line,
    structured_schema,
)
from evaluation.metrics import Row, run_metrics
from evaluation.models import EvalResult, EvalRun
from evaluation.reviewed import score_against_reference
from evaluation.suites import NO_RETRIEVAL, EvalError, EvalItem, Suite
from modelsvc.accounting import MeteredCall, metered_chat
from modelsvc.errors import ModelServiceError
from modelsvc.models import RouterVersion, ServedModel
from modelsvc.prompts import PROMPT_VERSION
from modelsvc.router import route, serving_model_for
from retrieval.embedding import embed_query, embedding_model_name, get_embedder
from retrieval.errors import RetrievalError
from retrieval.index_store import current_status, get_index
from retrieval.models import Article
from retrieval.search import Hit, reranker_name

logger = logging.getLogger(__name__)

# eval-v2: the clinician's prompt and passages (clinic.answering) plus the answer format.
EVAL_PROMPT_SUFFIX = "eval-v2"
# A running run whose row has not moved for this long lost its process and may be taken over.
STALE_AFTER = timedelta(minutes=10)
ProgressCallback = Callable[[EvalRun], None]


class _Abort(Exception):
    """A failure that would hit every question alike (server down, no index): stop the run
    without storing a row, so a resume answers the question again."""


# --- creating a run -----------------------------------------------------------------------


def git_commit() -> str:
    """HEAD of the checkout, with `-dirty` when tracked files differ from it."""
    base = str(settings.BASE_DIR)
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=base, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=base, capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return settings.GIT_COMMIT[:64]
    return (head + ("-dirty" if dirty else ""))[:64]


def resolve_model(suite: Suite, name: str | None) -> tuple[Any, str]:
    """(registry row or None, the `model` value to send). A name not in the registry is sent
    as it is; no name means the serving model of the suite's capability, else MODEL_NAME."""
    if name:
        row = ServedModel.objects.filter(name=name).first() or \
            ServedModel.objects.filter(served_name=name).order_by("-updated_at").first()
        return (row, row.served_name) if row else (None, name)
    row = serving_model_for(suite.capability)
    return (row, row.served_name) if row else (None, str(settings.MODEL_NAME))


def missing_gold_pmids(items: Sequence[EvalItem]) -> tuple[str, list[str]]:
    """(index version, gold PMIDs not in the current index)."""
    try:
        index = get_index()
    except RetrievalError as error:
        raise EvalError(str(error)) from error
    indexed = set(np.unique(index.article_ids).tolist())
    wanted = sorted({pmid for item in items for pmid in item.gold_pmids})
    ids: dict[str, int] = {}
    for start in range(0, len(wanted), 500):
        ids.update(Article.objects.filter(pmid__in=wanted[start:start + 500])
                   .values_list("pmid", "id"))
    return index.version, [pmid for pmid in wanted if ids.get(pmid) not in indexed]


def create_run(*, suite_name: str, model: str | None = None,
               data_paths: Sequence[Path | str] | None = None, limit: int | None = None,
               concurrency: int | None = None, k: int | None = None,
               allow_missing_gold: bool = False, created_by: Any = None) -> EvalRun:
    """Check the inputs and store the run (pending). Raises EvalError with what to do."""
    suite = suites.get_suite(suite_name)
    if limit is not None and limit < 1:
        raise EvalError("--limit must be at least 1.")
    paths = [Path(p).expanduser().resolve() for p in data_paths] if data_paths else \
        suites.default_paths(suite)
    if suite.name == "reviewed":
        items, source, fingerprint = suites.reviewed_items(limit)
        data_path = source
        if not items:
            raise EvalError("The reviewed suite has no held-out items yet: approve or correct "
                            "answers in the review queue, then export (the eval split).")
    else:
        items = suites.load_items(suite, paths, limit)
        data_path = "\n".join(str(p) for p in paths)
        fingerprint = suites.data_fingerprint(paths)

    index_version = ""
    if suite.name in ("pubmedqa", "reviewed", "mirage"):
        index_version = str(current_status().get("version") or "")
    if suite.name == "pubmedqa":
        index_version, missing = missing_gold_pmids(items)
        if missing and not allow_missing_gold:
            raise EvalError(
                f"{len(missing)} of {len(items)} questions' source articles are not in the "
                f"literature index {index_version} (e.g. PMID {missing[0]}), so retrieval "
                f"could not find them. Ingest the questions' abstracts first: `python "
                f"manage.py ingest {paths[0]}` (or pass --allow-missing-gold to score them "
                "as not retrieved).")
    elif suite.name == "mirage" and not index_version:
        raise EvalError("The mirage suite compares answers with and without retrieval, and "
                        "no literature index is built yet; run `python manage.py ingest PATH` "
                        "first.")

    router_version = ""
    if suite.name == "router":
        active = RouterVersion.objects.filter(active=True).first()
        router_version = active.version if active else ""
    served_model, model_name = resolve_model(suite, model) if suite.uses_model else (None, "")
    return EvalRun.objects.create(
        suite=suite.name, served_model=served_model,
        model_name=model_name[:200] if suite.uses_model else "router",
        adapter_path=served_model.adapter_path if served_model else "",
        base_model=served_model.base_model if served_model else "",
        index_version=index_version[:64],
        embedding_model=embedding_model_name()[:200],
        reranker=reranker_name()[:200] if suite.name != "router" else "",
        prompt_version=f"{PROMPT_VERSION}+{EVAL_PROMPT_SUFFIX}" if suite.uses_model else "",
        router_version=router_version, git_commit=git_commit(), data_path=data_path,
        data_sha256=fingerprint, limit=limit, total=len(items) * len(suite.conditions),
        options={
            "concurrency": int(concurrency or settings.EVAL_CONCURRENCY),
            "k": int(k or settings.ANSWER_PASSAGES_RETRIEVED),
            "passages_shown": settings.ANSWER_PASSAGES_SHOWN,
            "prompt_passages": settings.ANSWER_PASSAGES_PROMPTED,
            "max_tokens": settings.EVAL_MAX_TOKENS,
            "choice_max_tokens": settings.EVAL_CHOICE_MAX_TOKENS,
            "allow_missing_gold": allow_missing_gold,
            "conditions": list(suite.conditions),
        },
        created_by=created_by,
    )


# --- answering one question ---------------------------------------------------------------


@dataclass(frozen=True)
class RunContext:
    run_id: int
    suite: Suite
    model_name: str
    served_model: Any
    structured: bool
    k: int
    passages_shown: int
    prompt_passages: int
    max_tokens: int
    choice_max_tokens: int
    judge: Any


def _answer(context: RunContext, question: str, *, max_tokens: int, use_retrieval: bool = True,
            instruction: str = "", response_format: dict[str, Any] | None = None,
            verify_text: Callable[[str], str] | None = None) -> Answer:
    """The question through the answering pipeline, with the run's model and passage counts."""
    try:
        return answer_question(
            question, model=ModelChoice(context.model_name, context.served_model),
            purpose="evaluation", use_retrieval=use_retrieval, retrieved=context.k,
            shown=context.passages_shown, prompted=context.prompt_passages,
            max_tokens=max_tokens, instruction=instruction, response_format=response_format,
            verify_text=verify_text)
    except RetrievalError as error:
        raise _Abort(str(error)) from error
    except ModelServiceError as error:
        if not error.permanent:
            raise _Abort(error.message) from error
        raise


def _passage_rows(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    return [{"rank": rank, "pmid": hit.pmid, "title": hit.title, "section": hit.section,
             "text": hit.text, "score": float(hit.score), "year": hit.year,
             "retracted": hit.retracted} for rank, hit in enumerate(hits, start=1)]


def _gold_rank(item: EvalItem, hits: Sequence[Hit]) -> int | None:
    return next((rank for rank, hit in enumerate(hits, start=1)
                 if hit.pmid in item.gold_pmids), None)


def _gold_cited(item: EvalItem, answer: Answer) -> bool:
    gold_numbers = {p.number for p in answer.prepared.passages if p.pmid in item.gold_pmids}
    return bool(gold_numbers & set(answer.verification.cited_numbers))


def _verified_fields(answer: Answer) -> dict[str, Any]:
    verification = answer.verification
    return {"claims": verification.claim_rows(),
            "cited_passages": verification.cited_passages,
            "supporting_citations": verification.supporting_citations,
            "support_rate": verification.support_rate, "abstained": verification.abstain}


def _call_fields(answer: Answer) -> dict[str, Any]:
    result = answer.metered.result
    return {"answer_text": result.text, "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens, "cost": answer.metered.call.cost,
            "passages": _passage_rows(answer.prepared.retrieved),
            "retrieved_pmids": [hit.pmid for hit in answer.prepared.retrieved]}


# The answer format of PubMedQA* on a server without guided output; the synthetic literature
# training set (training.literature) ends its prompts with it too.
PUBMEDQA_TEXT_INSTRUCTION = ("Then, on a last line of its own, answer the question with one word: "
                             f"'{ANSWER_LINE} yes', '{ANSWER_LINE} no' or '{ANSWER_LINE} maybe'.")


def answer_pubmedqa(context: RunContext, item: EvalItem, condition: str) -> dict[str, Any]:
    if context.structured:
        instruction = ("Reply with JSON: \"explanation\" is your answer, citing passages as [n] "
                       "after each sentence; \"answer\" is yes, no or maybe.")
        response_format = structured_schema(suites.PUBMEDQA_DECISIONS, with_explanation=True)
    else:
        instruction = PUBMEDQA_TEXT_INSTRUCTION
        response_format = None

    def explanation(text: str) -> str:
        if context.structured:
            return parse_structured(text, suites.PUBMEDQA_DECISIONS)[1]
        return split_answer_line(text)

    answer = _answer(context, item.question, max_tokens=context.max_tokens,
                     instruction=instruction, response_format=response_format,
                     verify_text=explanation)
    text = answer.text
    predicted = (parse_structured(text, suites.PUBMEDQA_DECISIONS)[0] if context.structured
                 else parse_choice(text, suites.PUBMEDQA_DECISIONS))
    return {
        "predicted": predicted or "", "outcome": _outcome(predicted, item.gold),
        **_call_fields(answer), "gold_rank": _gold_rank(item, answer.prepared.retrieved),
        "gold_cited": _gold_cited(item, answer), **_verified_fields(answer),
        "extra": {"finish_reason": answer.metered.result.finish_reason,
                  "prompt_passages": len(answer.prepared.prompted),
                  "server_model": answer.metered.result.model},
    }


def mirage_question(item: EvalItem) -> str:
    """The exam question with its lettered options: what is searched for and asked."""
    options = "\n".join(f"{key}. {text}" for key, text in item.options.items())
    return f"{item.question}\nOptions:\n{options}"


def answer_mirage(context: RunContext, item: EvalItem, condition: str) -> dict[str, Any]:
    choices = list(item.options)
    letters = ", ".join(choices)
    instruction = (f"Reply with JSON: \"answer\" is the letter of the best option ({letters})."
                   if context.structured else
                   f"Reply with the letter of the best option ({letters}) on one line, as "
                   f"'{ANSWER_LINE} X'.")
    answer = _answer(context, mirage_question(item), max_tokens=context.choice_max_tokens,
                     use_retrieval=condition != NO_RETRIEVAL, instruction=instruction,
                     response_format=structured_schema(choices) if context.structured else None)
    text = answer.text
    predicted = (parse_structured(text, choices)[0] if context.structured else
                 parse_choice(text, choices, option_texts=item.options))
    return {
        "predicted": predicted or "", "outcome": _outcome(predicted, item.gold),
        **_call_fields(answer),
        "extra": {"finish_reason": answer.metered.result.finish_reason,
                  "prompt_passages": len(answer.prepared.prompted),
                  "server_model": answer.metered.result.model},
    }


def answer_router(context: RunContext, item: EvalItem, condition: str) -> dict[str, Any]:
    decision = route(item.question, embed_query(item.question))
    return {"predicted": decision.capability, "answer_text": decision.reason,
            "outcome": _outcome(decision.capability, item.gold),
            "extra": {"confidence": decision.confidence, "fallback": decision.fallback,
                      "router_version": decision.router_version}}


def answer_reviewed(context: RunContext, item: EvalItem, condition: str) -> dict[str, Any]:
    answer = _answer(context, item.question, max_tokens=context.max_tokens)
    verification = answer.verification
    scored = score_against_reference(
        answer=answer.text, claims=[claim.text for claim in verification.claims],
        cited_pmids=verification.cited_pmids, reference=item.reference, judge=context.judge)
    return {
        "predicted": "", "score": scored["score"],
        "outcome": EvalResult.Outcome.CORRECT if scored["agrees"] else EvalResult.Outcome.WRONG,
        **_call_fields(answer),
        "gold_rank": (_gold_rank(item, answer.prepared.retrieved) if item.gold_pmids
                      else None),
        "gold_cited": _gold_cited(item, answer) if item.gold_pmids else None,
        **_verified_fields(answer),
        "extra": {**scored["detail"], "prompt_passages": len(answer.prepared.prompted),
                  "server_model": answer.metered.result.model},
    }


ANSWERERS: dict[str, Callable[[RunContext, EvalItem, str], dict[str, Any]]] = {
    "pubmedqa": answer_pubmedqa, "mirage": answer_mirage, "router": answer_router,
    "reviewed": answer_reviewed, "claims": answer_claim,
}


def _outcome(predicted: str | None, gold: str) -> str:
    if predicted is None or predicted == "":
        return EvalResult.Outcome.UNPARSEABLE
    return EvalResult.Outcome.CORRECT if predicted == gold else EvalResult.Outcome.WRONG


def answer_item(context: RunContext, item: EvalItem, condition: str) -> dict[str, Any]:
    """The fields of one EvalResult. Runs in a worker thread; closes its own DB connection."""
    started = time.perf_counter()
    try:
        fields = ANSWERERS[context.suite.name](context, item, condition)
    except ModelServiceError as error:  # permanent, for this question only (e.g. too long)
        fields = {"outcome": EvalResult.Outcome.ERROR, "error": error.message}
    finally:
        connection.close()
    fields["latency_ms"] = int((time.perf_counter() - started) * 1000)
    return fields


# --- running ------------------------------------------------------------------------------


def probe_structured_output(model_name: str) -> bool:
    """Does the server honour a JSON-schema response_format? vLLM does; `transformers serve`
    rejects the field (HTTP 4xx), and a server that ignores it answers free text."""
    try:
        result = metered_chat(
            [{"role": "user", "content": "Which letter comes first in the alphabet, A or B? "
                                         "Reply with JSON."}],
            meter=MeteredCall(model_name=model_name, purpose="evaluation-probe"),
            max_tokens=16, response_format=structured_schema(["A", "B"])).result
    except ModelServiceError as error:
        if error.permanent:
            logger.info("model server rejects response_format (%s); using the text parser",
                        error.message)
            return False
        raise EvalError(error.message) from error
    return parse_structured(result.text, ["A", "B"])[0] is not None


def claim_run(run_id: int, *, worker: str, force: bool = False) -> bool:
    """Take the run with a conditional update; True if it is ours to work on now."""
    stale = timezone.now() - STALE_AFTER
    claimable = Q(status__in=[EvalRun.Status.PENDING, EvalRun.Status.FAILED,
                              EvalRun.Status.CANCELLED]) | \
        Q(status=EvalRun.Status.RUNNING, updated_at__lt=stale)
    if force:
        claimable |= Q(status=EvalRun.Status.RUNNING)
    updated = EvalRun.objects.filter(claimable, pk=run_id).update(
        status=EvalRun.Status.RUNNING, claimed_by=worker[:200], error_message="",
        cancel_requested=False, updated_at=timezone.now())
    if updated == 1:
        EvalRun.objects.filter(pk=run_id, started_at__isnull=True).update(
            started_at=timezone.now())
    return updated == 1


def _judge_model() -> Any:
    return (ServedModel.objects.filter(capability=ServedModel.Capability.JUDGE,
                                       status=ServedModel.Status.SERVING)
            .order_by("-updated_at").first())


def execute_run(run_id: int, *, worker: str = "", force: bool = False,
                progress: ProgressCallback | None = None) -> EvalRun | None:
    """Answer the run's missing questions and compute its figures. Idempotent: a finished run
    is left alone, an interrupted one resumes. None when the run is gone."""
    run = EvalRun.objects.select_related("served_model").filter(pk=run_id).first()
    if run is None:
        logger.info("eval run %s no longer exists; nothing to do", run_id)
        return None
    if run.status == EvalRun.Status.COMPLETE:
        return run
    if not claim_run(run_id, worker=worker or f"local:{os.getpid()}", force=force):
        logger.info("eval run %s is being worked on elsewhere", run_id)
        return run
    run.refresh_from_db()
    started = time.monotonic()
    try:
        status, message = _execute(run, progress)
        _finish(run, started, status=status, message=message)
    except (EvalError, _Abort) as error:
        _finish(run, started, status=EvalRun.Status.FAILED,
                message=f"{error} Finished questions are kept; resume with `python manage.py "
                        f"evaluate --resume {run.pk}`.")
    except Exception:
        logger.exception("eval run %s failed unexpectedly", run_id)
        _finish(run, started, status=EvalRun.Status.FAILED,
                message="The run stopped on an unexpected error (logged). Finished questions "
                        f"are kept; resume with `python manage.py evaluate --resume {run.pk}`.")
        raise
    return run


def _finish(run: EvalRun, started: float, *, status: str, message: str = "") -> None:
    run.status = status
    run.error_message = message
    run.finished_at = timezone.now()
    run.wall_seconds = round((run.wall_seconds or 0.0) + time.monotonic() - started, 2)
    run.done = run.results.count()
    run.save(update_fields=["status", "error_message", "finished_at", "wall_seconds", "done",
                            "metrics", "options", "server_model", "updated_at"])


def _execute(run: EvalRun, progress: ProgressCallback | None) -> tuple[str, str]:
    """Answer what is missing; (final status, message)."""
    suite = suites.get_suite(run.suite)
    if suite.name == "reviewed":
        items, _source, fingerprint = suites.reviewed_items(run.limit)
    else:
        paths = [Path(p) for p in run.data_path.splitlines() if p]
        items = suites.load_items(suite, paths, run.limit)
        fingerprint = suites.data_fingerprint(paths)
    if fingerprint != run.data_sha256:
        raise EvalError("The data changed since this run started (its hash differs), so "
                        "resuming would mix two data sets; start a new run instead.")
    if suite.uses_model and "structured_output" not in run.options:
        run.options["structured_output"] = probe_structured_output(run.model_name)
        run.save(update_fields=["options", "updated_at"])
    context = RunContext(
        run_id=run.pk, suite=suite, model_name=run.model_name, served_model=run.served_model,
        structured=bool(run.options.get("structured_output")),
        # A run resumes with the options it started with; older runs lack some of them.
        k=int(run.options.get("k", settings.ANSWER_PASSAGES_RETRIEVED)),
        passages_shown=int(run.options.get("passages_shown", settings.ANSWER_PASSAGES_SHOWN)),
        prompt_passages=int(run.options.get("prompt_passages",
                                            settings.ANSWER_PASSAGES_PROMPTED)),
        max_tokens=int(run.options.get("max_tokens", settings.EVAL_MAX_TOKENS)),
        choice_max_tokens=int(run.options.get("choice_max_tokens",
                                              settings.EVAL_CHOICE_MAX_TOKENS)),
        judge=_judge_model() if suite.name == "reviewed" else None)

    finished = set(run.results.values_list("item_id", "condition"))
    todo = [(item, condition) for item in items for condition in suite.conditions
            if (item.item_id, condition) not in finished]
    run.total = len(items) * len(suite.conditions)
    run.done = len(finished)
    run.save(update_fields=["total", "done", "updated_at"])
    logger.info("eval run %s: %d of %d answers to go", run.pk, len(todo), run.total)
    # Embedding and the index load once, before the threads race to do it.
    if todo and suite.name != "router":
        get_embedder()

    abort: BaseException | None = None
    cancelled = False
    workers = max(1, int(run.options.get("concurrency", settings.EVAL_CONCURRENCY)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"eval{run.pk}") as pool:
        pending: dict[Future[dict[str, Any]], tuple[EvalItem, str]] = {}
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < workers * 2 and abort is None and not cancelled:
                item, condition = queue.pop(0)
                pending[pool.submit(answer_item, context, item, condition)] = (item, condition)
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                item, condition = pending.pop(future)
                try:
                    fields = future.result()
                except _Abort as error:
                    abort = abort or error
                    continue
                except BaseException as error:  # stop feeding; re-raised after the drain
                    abort = abort or error
                    continue
                _store(run, item, condition, fields)
            run.done = run.results.count()
            EvalRun.objects.filter(pk=run.pk).update(done=run.done, updated_at=timezone.now())
            if progress:
                progress(run)
            if EvalRun.objects.filter(pk=run.pk, cancel_requested=True).exists():
                cancelled = True
            if abort is not None or cancelled:
                queue.clear()
    close_old_connections()
    if abort is not None:
        raise abort
    run.metrics = compute_metrics(run)
    run.server_model = next((r["extra"].get("server_model", "") for r in
                             run.results.values("extra")[:1]), "")[:200]
    if cancelled:
        return (EvalRun.Status.CANCELLED,
                "Cancelled; finished questions are kept and the run can be resumed.")
    if run.results.count() < run.total:
        raise EvalError(f"Only {run.results.count()} of {run.total} answers were stored.")
    return EvalRun.Status.COMPLETE, ""


def _store(run: EvalRun, item: EvalItem, condition: str, fields: dict[str, Any]) -> None:
    try:
        EvalResult.objects.create(
            run=run, item_id=item.item_id, condition=condition, subset=item.subset,
            question=item.question, options=item.options, gold=item.gold,
            gold_pmids=list(item.gold_pmids), **fields)
    except IntegrityError:
        # Another worker that took over a stale run stored it first: its row stands.
        logger.info("eval run %s: %s/%s already stored", run.pk, item.item_id, condition)


def result_rows(run: EvalRun) -> list[Row]:
    rows = []
    for result in run.results.all().only(
            "item_id", "outcome", "condition", "subset", "gold_rank", "gold_pmids",
            "gold_cited", "cited_passages", "supporting_citations", "claims", "abstained",
            "prompt_tokens", "completion_tokens", "cost", "latency_ms", "score", "gold",
            "predicted"):
        claims = result.claims or []
        rows.append(Row(
            item_id=result.item_id, outcome=result.outcome, condition=result.condition,
            subset=result.subset, gold_rank=result.gold_rank,
            has_gold_pmid=bool(result.gold_pmids) and result.outcome != "error",
            gold_cited=result.gold_cited, cited_passages=result.cited_passages,
            supporting_citations=result.supporting_citations, claims=len(claims),
            supported_claims=sum(1 for c in claims if c.get("supported")),
            abstained=result.abstained, prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens, cost=float(result.cost),
            latency_ms=float(result.latency_ms), score=result.score, gold=result.gold or "",
            predicted=result.predicted or ""))
    return rows


def compute_metrics(run: EvalRun) -> dict[str, Any]:
    if run.suite == "claims":
        return run_claim_metrics(run)
    return run_metrics(result_rows(run))
