"""The queue engine: ``ImageQueue``, its ``Job`` handles, workers, events and the loop they run on."""

from .image_queue import ImageQueue
from .job import Job

__all__ = ["ImageQueue", "Job"]
