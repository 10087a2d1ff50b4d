"""Training adapters from reviewed feedback and the literature.

    curation.py    a verified export + the synthetic literature set -> a curated training set
                   with its data card (filters: duplicates, abstained drafts, length, PHI,
                   decontamination against every evaluation suite)
    literature.py  the synthetic literature set, built the PubMedQA way from indexed articles
    trainer.py     PEFT LoRA with TRL (SFTTrainer / DPOTrainer): progress, cancel, resume,
                   merge; torch, peft and trl are imported only here, inside functions
    services.py    runs: create, queue (the `training` Celery queue), cancel, resume, execute,
                   register the adapter as a candidate ServedModel
    serving.py     names the embedded model server resolves, the served adapters folder
    models.py      TrainingSet (data card) and TrainingRun (job, progress, manifest, lineage)
    views.py       the training pages (admins only); tasks.py the thin Celery task
"""
