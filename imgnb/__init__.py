"""imgnb: a persistent, live image-generation job queue for diffusers in JupyterLab."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .core.history import Retention
from .core.leases import LeasePolicy
from .core.ordering import Priority
from .core.records import DeviceState, EventKind, GenerationRequest, JobEvent, ModelLoad
from .core.retry import RetryPolicy
from .core.states import JobStatus
from .errors import (
    DatabaseError,
    DatabaseURLError,
    IllegalTransition,
    ImgnbError,
    InvalidJob,
    JobCancelled,
    JobFailed,
    JobInterrupted,
    JobNotFound,
    JobTimedOut,
    JobWaitTimeout,
    MissingExtra,
    ModelLoadError,
    NotADatabase,
    QueueClosed,
    QueueConfigError,
    SchemaVersionError,
    UnsupportedPipeline,
)
from .gen.loading import loader
from .queue import ImageQueue, Job

if TYPE_CHECKING:
    from .gen.tiny import tiny_pipeline

__all__ = [
    "DatabaseError",
    "DatabaseURLError",
    "DeviceState",
    "EventKind",
    "GenerationRequest",
    "IllegalTransition",
    "ImageQueue",
    "ImgnbError",
    "InvalidJob",
    "Job",
    "JobCancelled",
    "JobEvent",
    "JobFailed",
    "JobInterrupted",
    "JobNotFound",
    "JobStatus",
    "JobTimedOut",
    "JobWaitTimeout",
    "LeasePolicy",
    "MissingExtra",
    "ModelLoad",
    "ModelLoadError",
    "NotADatabase",
    "Priority",
    "QueueClosed",
    "QueueConfigError",
    "Retention",
    "RetryPolicy",
    "SchemaVersionError",
    "UnsupportedPipeline",
    "loader",
    "tiny_pipeline",
]


def __getattr__(name: str) -> Any:
    """``tiny_pipeline`` is imported lazily: torch and diffusers load only when a pipeline is asked for."""
    if name == "tiny_pipeline":
        from .gen.tiny import tiny_pipeline

        return tiny_pipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
