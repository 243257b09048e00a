"""Live widgets for the queue, made of stock ipywidgets: ``JobCard`` for one job, ``QueueBoard``
for a whole queue, ``SweepGrid`` for a sweep's jobs side by side. ``job.widget()``, ``queue.widget()``
and ``queue.grid(...)`` make them; a job or a queue left as the last expression of a cell shows its
widget.

Built on ``ImageQueue``'s events: each widget redraws on the queue's loop (the kernel's), at most
ten times a second, sending only what changed.
"""

from .board import QueueBoard
from .grid import SweepGrid
from .job import JobCard

__all__ = ["JobCard", "QueueBoard", "SweepGrid"]
