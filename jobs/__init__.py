"""Background jobs, below every app: any layer may import it, it imports no app.

queueing     enqueue_after_commit(): a job is sent once its row is committed; when the broker
             cannot take it the row is marked failed with a sentence saying what to do
"""
