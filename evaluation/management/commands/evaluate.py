"""python manage.py evaluate --suite SUITE [--model NAME] [--limit N] [--json] [--resume ID]"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from evaluation import claims
from evaluation.harness import create_run, execute_run
from evaluation.models import EvalRun
from evaluation.suites import SUITES, EvalError
from modelsvc.verifier import VerifierError


class Command(BaseCommand):
    help = ("Run an evaluation suite (pubmedqa, mirage, reviewed, router, claims) and store "
            "the run; --resume continues an interrupted one. claims judges the pairs of --data "
            "FILE.jsonl with the configured claim check (VERIFIER_ENGINE / VERIFIER_MODEL).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--suite", choices=sorted(SUITES))
        parser.add_argument("--model", help="Registry name (ServedModel.name) or a raw served "
                            "model name; default: the serving model of the suite's capability, "
                            "else MODEL_NAME.")
        parser.add_argument("--limit", type=int, help="Evaluate the first N questions only.")
        parser.add_argument("--data", action="append", type=Path,
                            help="Data file in the suite's format (repeatable for router).")
        parser.add_argument("--concurrency", type=int, help="Questions in flight at once "
                            "(default EVAL_CONCURRENCY).")
        parser.add_argument("--k", type=int, help="Passages retrieved per question (Recall@k).")
        parser.add_argument("--allow-missing-gold", action="store_true",
                            help="pubmedqa: score questions whose article is not indexed as "
                            "not retrieved instead of refusing to start.")
        parser.add_argument("--resume", type=int, metavar="RUN_ID",
                            help="Continue an interrupted run; finished questions are kept.")
        parser.add_argument("--json", action="store_true", help="Print the run as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["resume"]:
                run = EvalRun.objects.filter(pk=options["resume"]).first()
                if run is None:
                    raise CommandError(f"There is no evaluation run {options['resume']}.")
            else:
                if not options["suite"]:
                    raise CommandError("Pass --suite (or --resume RUN_ID).")
                run = create_run(suite_name=options["suite"], model=options["model"],
                                 data_paths=options["data"], limit=options["limit"],
                                 concurrency=options["concurrency"], k=options["k"],
                                 allow_missing_gold=options["allow_missing_gold"])
                if run.suite == "claims":
                    claims.record_engine(run)
        except (EvalError, VerifierError) as error:
            raise CommandError(str(error)) from error
        if not options["json"]:
            self.stderr.write(f"run {run.pk}: {run.suite} on {run.model_name} "
                              f"({run.total} answers, data {run.data_sha256[:12]})")

        def progress(current: EvalRun) -> None:
            if not options["json"] and sys.stderr.isatty():
                self.stderr.write(f"\r{current.done}/{current.total}", ending="")

        try:
            finished = execute_run(run.pk, force=bool(options["resume"]), progress=progress)
        except KeyboardInterrupt:
            raise CommandError(f"Interrupted; resume with `python manage.py evaluate --resume "
                               f"{run.pk}`.") from None
        assert finished is not None
        finished.refresh_from_db()
        if finished.suite == "claims":
            # --json: the per-label figures as one JSON object on the last line.
            summary = claims.format_claim_summary(finished)
            if options["json"]:
                self.stderr.write(summary)
                self.stdout.write(json.dumps(claims.by_label(finished.metrics)))
            else:
                self.stdout.write(summary)
        elif options["json"]:
            self.stdout.write(json.dumps(run_summary(finished), indent=2, default=str))
        else:
            self.stdout.write(format_summary(finished))
        if finished.status != EvalRun.Status.COMPLETE:
            raise CommandError(finished.error_message or f"Run {finished.pk} {finished.status}.")


def run_summary(run: EvalRun) -> dict[str, Any]:
    return {
        "id": run.pk, "suite": run.suite, "status": run.status, "model": run.model_name,
        "served_model": run.served_model.name if run.served_model else None,
        "adapter_path": run.adapter_path, "server_model": run.server_model,
        "index_version": run.index_version, "prompt_version": run.prompt_version,
        "router_version": run.router_version, "git_commit": run.git_commit,
        "data_path": run.data_path, "data_sha256": run.data_sha256, "limit": run.limit,
        "options": run.options, "done": run.done, "total": run.total,
        "wall_seconds": run.wall_seconds, "error": run.error_message, "metrics": run.metrics,
    }


def _pct(block: dict[str, Any] | None) -> str:
    if not block or block.get("value") is None:
        return "-"
    return (f"{block['value']:.1%} [{block['ci_low']:.1%}, {block['ci_high']:.1%}] "
            f"({block['successes']}/{block['n']})")


def format_summary(run: EvalRun) -> str:
    lines = [f"Run {run.pk} ({run.suite}, {run.status}) on {run.model_name} in "
             f"{run.wall_seconds or 0:.1f} s; index {run.index_version or '-'}, prompt "
             f"{run.prompt_version or '-'}, commit {run.git_commit or '-'}"]
    for name, block in (run.metrics.get("conditions") or {}).items():
        lines.append(f"[{name}] {block['questions']} questions: accuracy {_pct(block['accuracy'])}"
                     f"; counting {block['unparseable']} unparseable and {block['errors']} "
                     f"errors as not correct: {_pct(block['accuracy_all'])}")
        for subset, sub in block.get("subsets", {}).items():
            lines.append(f"    {subset}: {_pct(sub['accuracy'])}, {sub['unparseable']} "
                         "unparseable")
        labels = block.get("labels")
        if labels:
            lines.append("    recall per gold label " + ", ".join(
                f"{label} {_pct(r)}" for label, r in sorted(labels["recall"].items()))
                + f"; balanced accuracy {labels['balanced_accuracy']:.1%}; predicted "
                + (", ".join(f"{label} {n}"
                             for label, n in sorted(labels["predicted"].items())) or "-")
                + f"; always \"{labels['majority']['label']}\" would score "
                + _pct(labels["majority"]))
        if "recall" in block:
            lines.append("    recall " + ", ".join(
                f"{k} {v:.1%}" for k, v in block["recall"].items() if v is not None)
                + f"; gold cited {_pct(block.get('gold_cited'))}")
        if "citation_precision" in block:
            lines.append(f"    citation precision {_pct(block['citation_precision'])}")
        if "claim_support_rate" in block:
            lines.append(f"    claim support {_pct(block['claim_support_rate'])}")
        lines.append(f"    abstained {_pct(block['abstention_rate'])}; accuracy when answering "
                     f"{_pct(block['accuracy_when_answering'])}")
        tokens = block["tokens_per_question"]
        latency = block["latency_ms"]
        if tokens["prompt"] is not None:
            lines.append(f"    tokens/question {tokens['prompt']:.0f} prompt + "
                         f"{tokens['completion']:.0f} completion; cost/question "
                         f"{block['cost_per_question']:.6f}")
        if latency["p50"] is not None:
            lines.append(f"    latency p50 {latency['p50']:.0f} ms, p95 {latency['p95']:.0f} ms")
    gain = run.metrics.get("retrieval_gain")
    if gain and gain.get("overall"):
        overall = gain["overall"]
        lines.append(f"retrieval gain {overall['difference']:+.1%} (95% CI "
                     f"{overall['ci_low']:+.1%} to {overall['ci_high']:+.1%})")
    return "\n".join(lines)
