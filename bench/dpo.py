"""DPO on reviewer corrections, measured: are the adapter's answers closer to the corrections
than the base model's, on corrected items that training never saw? Prints figures; asserts only
that no held-out item reached the training data.

    .venv/bin/python bench/dpo.py --model tiny --items 16 --max-steps 2 --out /tmp/dpo_bench/tiny
    nohup nice -n 5 .venv/bin/python bench/dpo.py --out /tmp/dpo_bench/full \\
        > /tmp/dpo_bench/log 2>&1 &                                  # SmolLM2, 120 questions

Everything runs through the product: questions are asked with `consultation_create` (the quick
answer path: retrieval, the served base model, claim checks) and stored; every answer is queued
with `enqueue_for_review` (REVIEW_SAMPLE_RATE=1) and decided with `review_item_decide` by bench
reviewer accounts; `export_training --format dpo` writes the verified train-split export;
`train_adapter --method dpo --export DIR` trains on it (chosen = the correction, rejected = the
model's answer); `evaluate --suite reviewed --model M` scores the base and the adapter on the
export's EVAL split, which the export and the training never read (`review.exports.split_of`,
EXPORT_EVAL_PERCENT).

The reviewer is simulated, and says so. The questions are the question-titled MEDLINE articles
of the shipped files that have a conclusion section (ordered by sha256("dpo:<seed>:<PMID>")),
ingested as the retrieval corpus; PubMedQA questions cannot be used, because the export
rightly drops every question of an evaluation benchmark. Each correction is the article's own
conclusion (its first two sentences) citing the passage of that article among the answer's
retrieved passages; an item whose article was not retrieved is not reviewed.

Metric (the reviewed suite's own): per held-out item, the agreement score of the answer with the
correction (content-word overlap of claims both ways plus shared citations, 0..1); an item
"agrees" at >= 0.5. Reported: mean score of each model with a bootstrap 95% interval, agreement
rate with a Wilson interval, and the paired difference adapter - base with a bootstrap interval.
Stages are skipped when their result file is in --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train as shared  # noqa: E402  (bench/train.py: the environment, manage.py, servers)

ROOT = shared.ROOT
say = shared.say
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def rank(seed: int, pmid: str) -> str:
    return hashlib.sha256(f"dpo:{seed}:{pmid}".encode()).hexdigest()


def correction_text(long_answer: str, max_sentences: int = 2) -> str:
    sentences = [s.strip() for s in _SENTENCE.split(long_answer.strip()) if s.strip()]
    return " ".join(sentences[:max_sentences])


def account(name: str, role: str) -> Any:
    from django.contrib.auth.models import Group, User

    user, _ = User.objects.get_or_create(username=name)
    user.groups.add(Group.objects.get_or_create(name=role)[0])
    return user


def accounts() -> tuple[Any, list[Any]]:
    from clinic.roles import CLINICIAN, REVIEWER

    return account("bench-clinician", CLINICIAN), [account(f"bench-reviewer-{n}", REVIEWER)
                                                   for n in (1, 2, 3)]


# --- answers and reviews -----------------------------------------------------------------------

def stage_data(args: argparse.Namespace) -> dict[str, Any]:
    """The question-titled MEDLINE articles with a conclusion section, ordered by seed; written
    as the JSON Lines file the retrieval corpus is ingested from (the whole record, conclusion
    included, as PubMed has it)."""
    from retrieval.parsers import ParsedArticle, ReadReport, read_records
    from training.literature import is_question_title, split_conclusion

    result_file = args.out / "data.json"
    if result_file.exists():
        say(f"data: done before ({result_file})")
        return dict(json.loads(result_file.read_text()))
    found: dict[str, dict[str, Any]] = {}
    for path in args.medline:
        for record in read_records(path, "pubmed-xml", ReadReport()):
            if (not isinstance(record, ParsedArticle) or record.retracted
                    or not is_question_title(record.title)):
                continue
            parts = split_conclusion(record.sections)
            if parts is None:
                continue
            found[record.pmid] = {
                "pmid": record.pmid, "title": record.title, "sections": record.sections,
                "journal": record.journal, "year": record.year,
                "publication_types": record.publication_types, "mesh_terms": record.mesh_terms,
                "language": record.language, "conclusion": parts[1]}
    chosen = sorted(found, key=lambda pmid: rank(args.seed, pmid))[:args.items]
    articles_file = args.out / "articles.jsonl"
    articles_file.write_text("".join(
        json.dumps({key: value for key, value in found[pmid].items() if key != "conclusion"})
        + "\n" for pmid in chosen))
    result = {"articles_file": str(articles_file), "found": len(found), "chosen": chosen,
              "questions": {pmid: found[pmid]["title"] for pmid in chosen},
              "conclusions": {pmid: found[pmid]["conclusion"] for pmid in chosen},
              "sources": [str(path) for path in args.medline]}
    say(f"data: {len(found)} question-titled MEDLINE articles with a conclusion; "
        f"{len(chosen)} asked")
    result_file.write_text(json.dumps(result, indent=2))
    return result


def stage_answers(args: argparse.Namespace, env: dict[str, Any], data: dict[str, Any]
                  ) -> dict[str, Any]:
    from clinic import quick
    from clinic.models import Consultation
    from clinic.services import consultation_create

    result_file = args.out / "answers.json"
    if result_file.exists():
        say(f"answers: done before ({result_file})")
        return dict(json.loads(result_file.read_text()))
    chosen = data["chosen"]
    if not (args.out / "ingest.done").exists():
        shared.manage("migrate", "--noinput", "-v", "0")
        shared.manage("ingest", "--format", "jsonl", data["articles_file"])
        (args.out / "ingest.done").write_text(data["articles_file"])
    clinician, _ = accounts()
    asked: dict[str, int] = {}
    progress_file = args.out / "answers.partial.json"
    if progress_file.exists():
        asked = json.loads(progress_file.read_text())
    started = time.monotonic()
    with ExitStack() as stack:
        shared.start_servers(stack, args, env)
        for number, pmid in enumerate(chosen, start=1):
            consultation_id = asked.get(pmid)
            if consultation_id is None:
                consultation_id = consultation_create(user=clinician,
                                                      question=data["questions"][pmid]).pk
                asked[pmid] = consultation_id
                progress_file.write_text(json.dumps(asked))
            quick.answer_in_background(consultation_id)
            quick.wait_for_local(consultation_id, args.answer_timeout)
            consultation = Consultation.objects.get(pk=consultation_id)
            say(f"{number}/{len(chosen)} consultation {consultation_id}: {consultation.status}")
    result = {"asked": asked, "seconds": round(time.monotonic() - started, 1),
              "statuses": sorted(Consultation.objects.filter(pk__in=asked.values())
                                 .values_list("status", flat=True))}
    result_file.write_text(json.dumps(result, indent=2))
    return result


def stage_reviews(args: argparse.Namespace, data: dict[str, Any], answers: dict[str, Any]
                  ) -> dict[str, Any]:
    from clinic.models import Consultation
    from review.exports import split_of
    from review.models import ReviewItem
    from review.services import (
        ClaimEdit,
        ReviewError,
        enqueue_for_review,
        review_item_claim,
        review_item_decide,
    )

    result_file = args.out / "reviews.json"
    if result_file.exists():
        say(f"reviews: done before ({result_file})")
        return dict(json.loads(result_file.read_text()))
    _, reviewers = accounts()
    counts = {"corrected": 0, "not_complete": 0, "not_queued": 0,
              "article_not_retrieved": 0}
    splits = {"train": 0, "eval": 0}
    for pmid, consultation_id in answers["asked"].items():
        consultation = Consultation.objects.get(pk=consultation_id)
        if consultation.status != Consultation.Status.COMPLETE:
            counts["not_complete"] += 1
            continue
        item = enqueue_for_review(consultation_id=consultation_id)
        if item is None:
            counts["not_queued"] += 1
            continue
        gold = consultation.passages.filter(pmid=pmid).order_by("rank").first()
        if gold is None:
            counts["article_not_retrieved"] += 1
            continue
        claims = [ClaimEdit(correction_text(data["conclusions"][pmid]), [gold.rank])]
        for reviewer in reviewers:
            item.refresh_from_db()
            if item.status == ReviewItem.Status.DONE:
                break
            try:
                review_item_claim(item_id=item.pk, reviewer=reviewer)
            except ReviewError:
                continue
            review_item_decide(item_id=item.pk, reviewer=reviewer, kind="correct",
                               claims=claims, error_categories=["wrong_fact"],
                               note="bench/dpo.py: the article's own conclusion")
        item.refresh_from_db()
        if item.status == ReviewItem.Status.DONE:
            counts["corrected"] += 1
            splits[split_of(consultation_id)] += 1
    result = {"counts": counts, "splits": splits}
    say(f"reviews: {counts}; corrected items by export split {splits}")
    result_file.write_text(json.dumps(result, indent=2))
    return result


# --- export, training, evaluation --------------------------------------------------------------

def stage_export_and_train(args: argparse.Namespace, env: dict[str, Any]) -> dict[str, Any]:
    from training.models import TrainingRun

    result_file = args.out / "train.json"
    if result_file.exists():
        say(f"train: done before ({result_file})")
        return dict(json.loads(result_file.read_text()))
    export_dir = export(args, "dpo")
    unfinished = TrainingRun.objects.filter(method="dpo").exclude(
        status=TrainingRun.Status.COMPLETE).order_by("-pk").first()
    started = time.monotonic()
    if unfinished is not None:
        text = shared.manage("train_adapter", "--resume", str(unfinished.pk))
    else:
        options = ["train_adapter", "--method", "dpo", "--export", str(export_dir),
                   "--literature", "none", "--base-model", str(env["base"]),
                   "--epochs", str(args.epochs), "--max-steps", str(args.max_steps),
                   "--batch-size", str(args.batch_size), "--gradient-accumulation",
                   str(args.gradient_accumulation), "--max-length", str(args.max_length),
                   "--save-steps", "10", "--logging-steps", "1", "--seed", str(args.seed)]
        if args.learning_rate:
            options += ["--learning-rate", str(args.learning_rate)]
        text = shared.manage(*options)
    run = TrainingRun.objects.get(pk=shared.last_json(text)["run"])
    manifest = run.manifest
    # The export's eval split never reaches training: no held-out question among the pairs.
    held_out = {shared.normalised(q) for q in held_out_questions()}
    pairs = Path(run.training_set.path) / "dpo.jsonl"
    for line in pairs.read_text().splitlines():
        prompt = json.loads(line)["prompt"]
        user = (prompt if isinstance(prompt, str) else
                next(m["content"] for m in reversed(prompt) if m["role"] == "user"))
        question = shared._QUESTION.search(user)
        assert question is not None and shared.normalised(question.group(1)) not in held_out, \
            "a held-out corrected item is a training pair"
    summary = {"run": run.pk, "registry_name": run.served_model.name if run.served_model
               else manifest["served_name"], "examples": manifest["examples"],
               "steps": manifest["steps"], "tokens": manifest["tokens"],
               "train_seconds": manifest["seconds"],
               "tokens_per_second": manifest["tokens_per_second"],
               "hyperparameters": manifest["hyperparameters"], "device": manifest["device"],
               "curve": manifest["curve"], "command_wall_seconds":
               round(time.monotonic() - started, 1), "load_after": shared.load()}
    result_file.write_text(json.dumps(summary, indent=2))
    return summary


def export(args: argparse.Namespace, fmt: str) -> Path:
    """`export_training --format FMT`; items the PHI gate held are released by the bench admin
    and go out in a second export (the first one held them back)."""
    export_dir = args.out / f"export-{fmt}"
    if not (export_dir / f"{fmt}.manifest.json").exists():
        shared.manage("export_training", "--format", fmt, "--out", str(export_dir))
        if release_phi_holds():
            shutil.rmtree(export_dir)
            shared.manage("export_training", "--format", fmt, "--out", str(export_dir))
    return export_dir


def release_phi_holds() -> int:
    """The PHI gate holds items whose text it is unsure of (here: published abstracts, names of
    trials and places). A bench admin releases them as the gate de-identified them, through the
    same service the admin page uses; the count is reported."""
    from clinic.roles import ADMIN
    from review.models import ReviewItem
    from review.services import phi_clearance_record

    admin = account("bench-admin", ADMIN)
    held = list(ReviewItem.objects.filter(phi_status=ReviewItem.PhiStatus.HELD)
                .values_list("pk", flat=True))
    for item_id in held:
        phi_clearance_record(item_id=item_id, admin=admin, decision="release",
                             note="bench/dpo.py: published abstract text, no patient")
    if held:
        say(f"PHI gate: {len(held)} held item(s) released as de-identified by the bench admin")
    return len(held)


def held_out_questions() -> list[str]:
    from evaluation.reviewed import held_out_items

    return [item.question for item in held_out_items()[0]]


def stage_eval(args: argparse.Namespace, trained: dict[str, Any], env: dict[str, Any]
               ) -> dict[str, dict[str, Any]]:
    export(args, "eval")  # the held-out items' PHI check: the reviewed suite reads cleared ones
    runs = {}
    with ExitStack() as stack:
        if not all((args.out / f"eval-reviewed-{label}.json").exists()
                   for label in ("base", "adapter")):
            shared.start_servers(stack, args, env)
        for label, model in (("base", str(env["base"])), ("adapter", trained["registry_name"])):
            runs[label] = shared.evaluate(args, "reviewed", label, model, [])
    return runs


def bootstrap(values: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    if not values:
        return (float("nan"), float("nan"))
    generator = random.Random(seed)
    means = sorted(sum(generator.choices(values, k=len(values))) / len(values)
                   for _ in range(draws))
    return means[int(0.025 * draws)], means[int(0.975 * draws) - 1]


def report(args: argparse.Namespace, reviews: dict[str, Any], trained: dict[str, Any],
           runs: dict[str, dict[str, Any]]) -> None:
    from evaluation.gate import compare_runs
    from evaluation.metrics import proportion
    from evaluation.models import EvalResult, EvalRun

    print("\n=== DPO on reviewer corrections (simulated reviewer: the article's conclusion) ===")
    print(f"reviews: {reviews['counts']}; corrected by export split {reviews['splits']}")
    print(f"training: run {trained['run']} -> {trained['registry_name']} on "
          f"{trained['device']}: {trained['examples']} pairs, {trained['steps']} steps, "
          f"{trained['tokens']} tokens in {trained['train_seconds']:.0f} s "
          f"({trained['tokens_per_second'] or 0:.1f} tokens/s)")
    scores: dict[str, dict[str, float]] = {}
    for label in ("base", "adapter"):
        run = EvalRun.objects.get(pk=runs[label]["id"])
        results = list(run.results.all())
        scores[label] = {result.item_id: float(result.score or 0.0) for result in results}
        values = list(scores[label].values())
        agrees = sum(1 for r in results if r.outcome == EvalResult.Outcome.CORRECT)
        low, high = bootstrap(values)
        block = proportion(agrees, len(results))
        print(f"{label:<8} n={len(values):>3}  mean agreement score "
              f"{sum(values) / max(len(values), 1):.3f} [{low:.3f}, {high:.3f}]  agrees "
              f"{shared.pct(block)}")
    common = sorted(set(scores["base"]) & set(scores["adapter"]))
    differences = [scores["adapter"][key] - scores["base"][key] for key in common]
    low, high = bootstrap(differences)
    mean = sum(differences) / max(len(differences), 1)
    print(f"paired difference adapter - base over {len(common)} held-out items: {mean:+.3f} "
          f"[{low:+.3f}, {high:+.3f}]; closer to the corrections: "
          f"{'yes' if low > 0 else 'not shown'}")
    comparison = compare_runs(EvalRun.objects.get(pk=runs["adapter"]["id"]),
                              EvalRun.objects.get(pk=runs["base"]["id"]))
    print(f"gate (reviewed): {comparison['verdict']}: {comparison.get('reason', '')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    literature_dir = Path(os.environ.get("LITERATURE_DATA_DIR") or ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path("/tmp/dpo_bench/full"))
    parser.add_argument("--var-dir", type=Path, help="VAR_DIR; default OUT/var")
    parser.add_argument("--literature-dir", type=Path, default=literature_dir)
    parser.add_argument("--medline", type=Path, nargs="*", help="MEDLINE files whose "
                        "question-titled articles are asked; default LITERATURE_DIR/pubmed/*.gz")
    parser.add_argument("--items", type=int, default=120, help="Questions asked and reviewed.")
    parser.add_argument("--eval-percent", type=int, default=40,
                        help="EXPORT_EVAL_PERCENT: the share of reviewed items held out.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", choices=sorted(shared.MODEL_FOLDERS), default="smollm2")
    parser.add_argument("--base-model", type=Path, help="A model folder instead of --model.")
    parser.add_argument("--model-port", type=int)
    parser.add_argument("--continuous-batching", action=argparse.BooleanOptionalAction,
                        default=True)
    parser.add_argument("--answer-timeout", type=float, default=900.0)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--gradient-accumulation", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--learning-rate", type=float, default=None)
    args = parser.parse_args()
    args.out = args.out.resolve()
    if args.out == ROOT or ROOT in args.out.parents:
        raise SystemExit("--out must be outside the repository.")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.medline is None:
        args.medline = sorted((args.literature_dir / "pubmed").glob("*.xml.gz"))
    os.environ.update({"REVIEW_SAMPLE_RATE": "1", "EXPORT_EVAL_PERCENT": str(args.eval_percent),
                       "RATE_LIMIT_PER_MINUTE": "100000", "WARM_UP_ON_START": "0"})
    env = shared.configure(args)
    say(f"bench/dpo.py -> {args.out} (VAR_DIR {env['var_dir']}, base {env['base']}, "
        f"{shared.load()})")
    data = stage_data(args)
    answers = stage_answers(args, env, data)
    reviews = stage_reviews(args, data, answers)
    if not reviews["splits"]["train"] or not reviews["splits"]["eval"]:
        raise SystemExit(f"Corrected items by split {reviews['splits']}: both the train and "
                         "the eval split need some; ask more questions (--items).")
    trained = stage_export_and_train(args, env)
    runs = stage_eval(args, trained, env)
    report(args, reviews, trained, runs)


if __name__ == "__main__":
    main()
