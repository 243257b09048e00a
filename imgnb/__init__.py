"""imgnb: a persistent, live image-generation job queue for diffusers in JupyterLab."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .core.leases import LeasePolicy
from .core.ordering import Priority
from .core.records import EventKind, GenerationRequest, JobEvent
from .core.retry import RetryPolicy
from .core.states import JobStatus
from .errors import (
    DatabaseError,
    IllegalTransition,
    ImgnbError,
    InvalidJob,
    JobCancelled,
    JobFailed,
    JobInterrupted,
    JobNotFound,
    JobTimedOut,
    JobWaitTimeout,
    NotADatabase,
    QueueClosed,
    QueueConfigError,
    SchemaVersionError,
)
from .queue import ImageQueue, Job

if TYPE_CHECKING:
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline

__all__ = [
    "DatabaseError",
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
    "NotADatabase",
    "Priority",
    "QueueClosed",
    "QueueConfigError",
    "RetryPolicy",
    "SchemaVersionError",
    "tiny_pipeline",
]


def tiny_pipeline(**kwargs: Any) -> StableDiffusionPipeline:
    """A real Stable Diffusion pipeline with tiny random weights, built offline in well under a second.

    Imported lazily: torch and diffusers load only when a pipeline is asked for.
    """
    from .gen.tiny import tiny_pipeline as build

    return build(**kwargs)
