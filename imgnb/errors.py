"""Every exception imgnb raises, under one root so callers can catch ``ImgnbError``.

Each class's docstring is its default message. Exceptions that steer control flow carry the data
the caller needs (a failed job carries its id and stored error).
"""

from __future__ import annotations

__all__ = [
    "DatabaseError",
    "DatabaseURLError",
    "IllegalTransition",
    "ImgnbError",
    "InvalidJob",
    "JobCancelled",
    "JobFailed",
    "JobInterrupted",
    "JobNotFound",
    "JobTimedOut",
    "JobWaitTimeout",
    "MissingExtra",
    "ModelLoadError",
    "NotADatabase",
    "QueueClosed",
    "QueueConfigError",
    "SchemaVersionError",
    "UnsupportedPipeline",
]


class ImgnbError(Exception):
    """imgnb failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (type(self).__doc__ or "").strip())


class InvalidJob(ImgnbError, ValueError):
    """A job's input is invalid; nothing was stored."""


class IllegalTransition(ImgnbError):
    """A job cannot move from its current status to the one asked for."""


class JobNotFound(ImgnbError, KeyError):
    """No job with this id exists in the database."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class JobFailed(ImgnbError):
    """The job ended in error."""

    def __init__(self, job_id: int, error: str | None) -> None:
        super().__init__(f"job {job_id} failed: {error}")
        self.job_id = job_id
        self.error = error


class JobCancelled(ImgnbError):
    """The job was cancelled."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} was cancelled")
        self.job_id = job_id


class JobInterrupted(ImgnbError):
    """Raised inside a generator by ``on_step`` to stop a job that was cancelled or timed out.

    Generators should let it propagate; the queue, not the generator, decides the final status.
    """


class JobTimedOut(JobInterrupted):
    """The job ran past its timeout."""


class JobWaitTimeout(ImgnbError, TimeoutError):
    """The job did not finish within the time given to wait for it; it goes on running."""


class MissingExtra(ImgnbError, ImportError):
    """An optional part of imgnb needs a package that is not installed (its message says which extra)."""


class QueueClosed(ImgnbError):
    """The queue is closed."""


class QueueConfigError(ImgnbError, ValueError):
    """An ``ImageQueue`` was built with options that do not fit together or are out of range."""


class DatabaseError(ImgnbError):
    """The job database cannot be used."""


class DatabaseURLError(DatabaseError):
    """The database URL cannot be used: it does not parse, or names a database kind or driver that
    is not installed. Trying again will not help."""


class NotADatabase(DatabaseError):
    """The file is not an imgnb job database (or is corrupt); it was left untouched."""


class SchemaVersionError(DatabaseError):
    """The database was written by an incompatible version of imgnb."""


class UnsupportedPipeline(ImgnbError, TypeError):
    """This pipeline cannot run imgnb jobs: its ``__call__`` lacks an argument imgnb needs."""


class ModelLoadError(ImgnbError):
    """A model's loader failed (or returned no pipeline); the job that needed it is retried like any
    transient failure, and the worker goes on."""
