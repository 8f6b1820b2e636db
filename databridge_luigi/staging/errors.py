"""What can go wrong with a staged object, as exceptions every staging module raises."""
from __future__ import annotations


class StagingError(RuntimeError):
    """A staging object that is missing, corrupt or already exists."""


class AlreadyStaged(StagingError):
    """The manifest for this version exists: another run finished it first."""
