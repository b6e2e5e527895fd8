"""Exceptions and warnings of spred (standard library only)."""


class NotSparsifiedError(ValueError):
    """Raised when an operation needs a model sparsified by :func:`spred.sparsify`."""
