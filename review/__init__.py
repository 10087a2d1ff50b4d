"""The review queue and what comes out of it.

- `models`: review items, write-once decisions and PHI clearances, export batches.
- `receivers`: queues finished answers and feedback (signals from `clinic.signals`).
- `services` / `selectors`: writes (claim, decide, adjudicate, release PHI) and reads.
- `exports`: SFT / DPO / eval files with a manifest; `phi`: the de-identification gate.
- `views`, `forms`, `charts`, `urls`, `templates/review/`: the reviewer and admin pages.
- `tasks`: the export job; `management/commands`: `export_training`, `verify_export`, and
  `flush`, which sets SQLite's write-once triggers aside while it empties every table.
"""
