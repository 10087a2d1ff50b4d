"""Staged evaluation of model versions, through the clinic's own answering pipeline.

- `models`: evaluation runs, one result per question and condition, promotion decisions.
- `suites`: what each benchmark asks and where its data comes from; `reviewed`: our own suite.
- `harness`: creates, runs and resumes a run; `metrics`, `extraction`: figures and parsing.
- `gate`: the promotion gate; `views`, `charts`, `urls`, `templates/evaluation/`: dashboards.
- `tasks`: the evaluation job; `management/commands`: `evaluate`.
"""
