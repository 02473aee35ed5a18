"""
The one error of the file formats, shared so that no format module imports another for it.

A vehicle or a trainer catches ``CheckpointError`` whatever it was handed (a v1 checkpoint, a
legacy file or a policy export) and reports its message, which names the file and the reason.
"""


class CheckpointError(Exception):
    """A checkpoint or policy export that cannot be used (unreadable, unsafe, wrong format)."""
