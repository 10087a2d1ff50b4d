"""Background jobs, below every app: any layer may import it, it imports no app.

queueing     enqueue_after_commit(): a job is sent once its row is committed; when the broker
             cannot take it the row is marked failed with a sentence saying what to do
checks       the system check: every task has a hard time limit below the visibility timeout
broker       QueuedJobs: which jobs have a message in Redis (waiting, or delivered unacked)
reconcile    register() per job kind; re-queues, exactly once, rows left with no live owner
"""
