"""The retrieval boundary's error: its message is one sentence a person can act on."""


class RetrievalError(Exception):
    """Search cannot run (no index yet, index unreadable, model missing)."""
