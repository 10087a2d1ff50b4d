"""Literature retrieval: PubMed ingestion, chunking, embeddings, FAISS + BM25, evaluation.

parsers      PubMed XML / JSONL / PubMedQA readers (lxml iterparse), bad input counted
chunking     sentence-packed chunks inside one article, labelled with their sections
embedding    the process-wide sentence-transformers encoder
services     ingest_paths(): files -> articles, chunks, cached embeddings -> one index build
claims       one worker per ingest file: a claim token and a heartbeat; takeover of a dead one
file_order   NLM's file order (pubmedYYnNNNN): an update file waits for the earlier files
article_store  per-PMID versioned writes: the newest record wins, a deletion stays deleted
tasks        Celery: one task per file, then one index build
index_build  a new index version built aside, then CURRENT swapped with os.replace
index_store  the loaded version per process, reloaded when CURRENT changes; current_status()
search       bm25 / dense / hybrid (RRF) / hybrid+rerank, with filters
evaluation   PubMedQA retrieval metrics (ranx), stored as RetrievalEvalRun rows
"""
