"""The public exceptions of stepstone.

``MisconfigurationException`` keeps Lightning's name so that ``except`` clauses written for Lightning keep
working; it subclasses ``ValueError`` because every misconfiguration is a bad value passed by the user.
"""

from __future__ import annotations

from typing_extensions import override

__all__ = [
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "MisconfigurationException",
    "UnsafeCheckpointError",
]


class MisconfigurationException(ValueError):
    """An argument or a combination of arguments is invalid.

    The message names the argument, the value received and what to pass instead.
    """


class CheckpointError(Exception):
    """Base class of the errors raised while saving or loading a checkpoint."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint exists at the requested path, or none matches the requested selector."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint file failed its integrity check (truncated, bit-flipped or structurally damaged).

    Args:
        path: the file that failed.
        reason: what exactly did not verify.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"Checkpoint {path!r} is corrupt: {reason}. It was not loaded.")

    @override
    def __reduce__(self) -> tuple[type[CheckpointCorruptError], tuple[str, str]]:
        # Rebuilt from (path, reason) when unpickled: torch.distributed.checkpoint sends a rank's failure to
        # every rank pickled, and the default (the message as the only argument) cannot rebuild it.
        return (type(self), (self.path, self.reason))


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint contains objects that cannot be loaded without executing code from the file.

    Loading such a file needs an explicit opt-in for trusted files (``trusted=True``).
    """
