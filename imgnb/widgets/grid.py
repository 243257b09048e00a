"""``SweepGrid``: the jobs of one group as a live contact sheet, one cell per (row value, column value).

``q.grid("sweep-7", rows="prompt", cols="guidance_scale")`` lays the group's jobs out by two of their
fields (see ``sweep_layout``). A cell shows its jobs side by side, several seeds of one setting at a
glance: a small thumbnail once a job is complete, before that a placeholder with its state and
progress, a red one with the error if it failed. A cell's button shows its images large under the
grid, with the prompt, seed, parameters, model and job id that make each again. Jobs of the group
submitted later join the grid.

Built for a thousand cells: a cell is two widget models (its HTML and its button) that share one
layout and one style, all placed by one CSS grid; thumbnails are 64 px JPEGs made once per finished
job; a redraw (ten a second at most) sends only the cells whose jobs changed. Queue positions are not
shown in the cells: when the head of the queue moves, a thousand cells would change at once.

``static_html()`` is the same grid as one HTML table with the thumbnails inline, for places that do
not run widgets (nbviewer, GitHub). The grid's display bundle carries it as it was when shown: show
the grid again (or ``HTML(grid.static_html())``) once the sweep ran to keep the finished one in the
saved notebook.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as w
from ipywidgets.widgets.widget_string import HTMLStyle
from PIL import Image
from traitlets import Int, TraitError, observe, validate

from ..core.bulk_events import BulkEvents
from ..core.records import EventKind, JobEvent
from ..core.states import JobStatus
from ..core.validation import invalid
from .live import LiveBox, LiveUpdates, assign
from .sweep_html import (
    DetailEntry,
    axis_html,
    cell_html,
    cell_label,
    corner_html,
    detail_html,
    summary_html,
    table_html,
    tile_html,
)
from .sweep_layout import CellKey, SweepLayout, check_axis, value_key
from .thumbs import thumbnail_uri

if TYPE_CHECKING:
    from ..queue import ImageQueue, Job

__all__ = ["GridCell", "SweepGrid", "grid_html"]

THUMBNAIL_SIZE = 64
DETAIL_SIZE = 512
# Jupyter drops widget messages over 1,000 a second (its iopub rate limit, over 3 s), which would
# leave cells stale: at ten redraws a second, 50 cells each keep the grid at half that.
MAX_CELLS_PER_REDRAW = 50
DETAIL_HINT = '<i style="color:#757575">Click a cell\'s button to see its images large, with their recipes.</i>'


def job_tile(job: Job, size: int) -> str:
    """One job's tile: its thumbnail (a JPEG ``data:`` URI) once complete, else its placeholder."""
    record = job.record
    done = record.status is JobStatus.COMPLETE and record.images
    uri = thumbnail_uri(record.images[0], size, "JPEG") if done else None
    step = job.step if record.status is JobStatus.PROCESSING else None
    return tile_html(record, step=step, image_uri=uri, size=size)


def _image_text(path: str) -> dict[str, str]:
    """The text an image file carries (model, scheduler, ... written by the generator); {} if none."""
    try:
        with Image.open(path) as im:
            text = getattr(im, "text", {})
            return {k: v for k, v in text.items() if isinstance(v, str)}
    except (OSError, ValueError):
        return {}


def _group_jobs(queue: ImageQueue, group: object) -> list[Job]:
    if not isinstance(group, str) or not group:
        raise invalid("group", group, "a group name given at submit (group=...)")
    return queue.jobs(group=group)


def _layout_of(jobs: Sequence[Job], rows: object, cols: object) -> SweepLayout:
    """The grid of ``jobs`` by ``rows`` and ``cols``; ``InvalidJob`` for a field none of them has."""
    records = [j.record for j in jobs]
    layout = SweepLayout(check_axis("rows", rows, records), check_axis("cols", cols, records))
    layout.place_all(records)
    return layout


def _counts(jobs: Mapping[int, Job]) -> Counter[str]:
    return Counter(job.status.value for job in jobs.values())


def grid_html(queue: ImageQueue, group: str, *, rows: str, cols: str, thumbnail_size: int = THUMBNAIL_SIZE) -> str:
    """The sweep grid as static HTML (no widgets): what ``q.grid(...)`` shows, as it is now."""
    jobs = _group_jobs(queue, group)
    layout = _layout_of(jobs, rows, cols)
    by_id = {j.id: j for j in jobs}

    def cell(key: CellKey) -> str:
        return cell_html([job_tile(by_id[i], thumbnail_size) for i in layout.cell(key)], size=thumbnail_size)

    return table_html(layout, summary_html(group, layout, _counts(by_id)), cell)


class _Shared:
    """The layouts and styles every cell, heading and filler shares: one model each, not one per cell."""

    def __init__(self) -> None:
        # grid_area, not grid_row: JupyterLab's widget manager drops a grid_row of "span 2"
        spans_two = "span 2 / auto"  # the row's heading and an empty cell sit beside its html and buttons
        self.cell = w.Layout(min_width="0")
        self.button = w.Layout(width="auto", height="22px", padding="0 4px", margin="0 0 6px 0")
        self.row_head = w.Layout(grid_area=spans_two, align_self="center", max_width="320px")
        self.col_head = w.Layout(align_self="flex-end")
        self.filler = w.Layout(grid_area=spans_two)
        self.html_style = HTMLStyle()
        self.button_style = w.ButtonStyle(font_size="11px")

    def widgets(self) -> list[Any]:
        return [self.cell, self.button, self.row_head, self.col_head, self.filler, self.html_style, self.button_style]


class GridCell:
    """One cell: ``html`` (its thumbnails or placeholders) and ``button`` (shows them large).

    Made with its content: a widget made empty and filled at once would send an update message on top
    of its opening one, and Jupyter counts those against its message rate limit (opening ones not)."""

    def __init__(
        self, key: CellKey, shared: _Shared, on_click: Callable[[CellKey], None], job_ids: list[int], content: str
    ) -> None:
        self.key = key
        self.job_ids = job_ids
        self.html = w.HTML(content, layout=shared.cell, style=shared.html_style)
        self.button = w.Button(
            description=cell_label(job_ids),
            tooltip=self._tooltip(job_ids),
            icon="search-plus",
            layout=shared.button,
            style=shared.button_style,
        )
        self.button.on_click(lambda _: on_click(key))

    @staticmethod
    def _tooltip(job_ids: list[int]) -> str:
        return f"show job{'s' if len(job_ids) > 1 else ''} {', '.join(str(i) for i in job_ids)} large"

    def show(self, job_ids: list[int], content: str) -> bool:
        """Send what changed: the thumbnails, and the button only when jobs joined or left the cell.
        True if anything was sent."""
        sent: bool = content != self.html.value
        assign(self.html, value=content)
        if job_ids != self.job_ids:
            sent = True
            self.job_ids = job_ids
            with self.button.hold_sync():
                assign(self.button, description=cell_label(job_ids), tooltip=self._tooltip(job_ids))
        return sent


class SweepGrid(LiveBox):
    """A live grid of one group's jobs: ``SweepGrid(queue, group, rows=..., cols=...)`` or ``q.grid(...)``."""

    thumbnail_size = Int(THUMBNAIL_SIZE, help="Side of a cell's thumbnails, in pixels.")
    detail_size = Int(DETAIL_SIZE, help="Largest side of an image shown large under the grid, in pixels.")

    @validate("thumbnail_size", "detail_size")
    def _valid_size(self, proposal: dict[str, Any]) -> int:
        name, value = proposal["trait"].name, proposal["value"]
        low, high = (16, 256) if name == "thumbnail_size" else (64, 2048)
        if not low <= value <= high:
            raise TraitError(f"{name}={value!r} is invalid; allowed: {low} to {high} pixels")
        return int(value)

    @observe("thumbnail_size", "detail_size")
    def _size_changed(self, change: dict[str, Any]) -> None:
        if self._live is not None:
            self._redraw_all()

    def __init__(self, queue: ImageQueue, group: str, *, rows: str, cols: str, **kwargs: Any) -> None:
        jobs = _group_jobs(queue, group)
        self._layout = _layout_of(jobs, rows, cols)  # refuses an unknown field before any widget exists
        self._queue = queue
        self._group = group
        self._jobs: dict[int, Job] = {j.id: j for j in jobs}
        self._others: set[int] = set()  # ids seen in events that belong to other groups
        self._unknown: set[int] = set()  # ids seen in events, group not known yet
        self._dirty: set[int] = set()  # jobs of the grid that changed since the last redraw
        self._waiting: set[CellKey] = set()  # cells to draw at the next redraw (over MAX_CELLS_PER_REDRAW)
        self._tiles: dict[int, tuple[Hashable, str]] = {}  # job id -> (what the tile was drawn from, its HTML)
        self._cells: dict[CellKey, GridCell] = {}
        self._heads: dict[tuple[str, Hashable], w.HTML] = {}  # ("row" or "col", value key) -> heading
        self._fillers: dict[CellKey, w.HTML] = {}
        self._arranged = -1  # the layout's shape_changes when the grid was last laid out
        self._selected: CellKey | None = None
        self._shared = _Shared()
        self._corner = w.HTML(corner_html(rows, cols), style=self._shared.html_style)
        self.summary_html = w.HTML(self._summary())
        self.grid_box = w.GridBox(layout=w.Layout(grid_gap="0 8px", overflow="auto", max_height="720px"))
        self.detail_html = w.HTML(DETAIL_HINT)
        self._arrange()
        super().__init__(
            [self.summary_html, self.grid_box, self.detail_html],
            layout=w.Layout(border="1px solid #ddd", padding="6px"),
            **kwargs,
        )
        self._live = LiveUpdates(
            queue, wants=self._wants, wants_bulk=self._wants_bulk, redraw=self.refresh, interval=self.interval
        )
        self._redraw_all()  # catches what changed between the read above and the subscription

    # -- what the grid holds ---------------------------------------------------------------------

    @property
    def queue(self) -> ImageQueue:
        return self._queue

    @property
    def group(self) -> str:
        return self._group

    @property
    def row_values(self) -> list[object]:
        """The row values, top to bottom (the first value seen of each)."""
        return [v.value for v in self._layout.rows.values]

    @property
    def col_values(self) -> list[object]:
        """The column values, left to right."""
        return [v.value for v in self._layout.cols.values]

    def cell(self, row: object, col: object) -> GridCell | None:
        """The widgets of the cell at these values; None when no job has them."""
        return self._cells.get((value_key(row), value_key(col)))

    def select(self, row: object, col: object) -> None:
        """Show the cell at these values large under the grid (what its button does)."""
        found = self.cell(row, col)
        if found is None:
            axes = f"({self._layout.rows.name}, {self._layout.cols.name})"
            raise invalid("cell", (row, col), f"a {axes} pair of values the grid shows")
        self._select(found.key)

    # -- following the queue -----------------------------------------------------------------------

    def _wants(self, event: JobEvent) -> bool:
        job_id = event.job_id
        if job_id in self._jobs:
            if event.kind is EventKind.POSITION:
                return False  # positions are not shown (see the module's docstring)
            self._dirty.add(job_id)
            return True
        if event.kind is EventKind.STATUS and job_id not in self._others:
            self._unknown.add(job_id)  # a new job, perhaps of this group: read at the next redraw
            return True
        return False

    def _wants_bulk(self, events: BulkEvents) -> bool:
        """``_wants`` of a bulk edit's status events, at once."""
        ids = events.id_set()
        mine = ids & self._jobs.keys()
        unknown = ids - self._jobs.keys() - self._others
        self._dirty |= mine
        self._unknown |= unknown
        return bool(mine or unknown)

    def _learn(self) -> None:
        """Read the group once for the jobs seen in events but not yet known."""
        unknown, self._unknown = self._unknown, set()
        jobs = self._queue.jobs(group=self._group)
        for job in jobs:
            if job.id not in self._jobs:
                self._jobs[job.id] = job
                self._dirty.add(job.id)
        self._others |= unknown - {j.id for j in jobs}

    def _redraw_all(self) -> None:
        self._dirty.update(self._jobs)
        self.live.mark()

    def refresh(self) -> None:
        """Redraw now what changed (the grid also does it by itself)."""
        if self._unknown and not self._queue.closed:
            self._learn()
        dirty, self._dirty = self._dirty, set()
        changed = self._waiting
        for job_id in dirty:
            changed.update(self._layout.place(self._jobs[job_id].record))
            cell = self._layout.cell_of(job_id)
            if cell is not None:
                changed.add(cell)
        if self._layout.shape_changes != self._arranged:
            changed -= self._arrange()  # new cells are made with their content
        # row by row, so that a burst fills the grid from the top
        order = sorted(changed, key=lambda k: (self._layout.rows[k[0]].rank, self._layout.cols[k[1]].rank))
        self._waiting = set()
        sent = 0
        for i, key in enumerate(order):
            if sent == MAX_CELLS_PER_REDRAW:
                self._waiting = set(order[i:])
                break
            sent += self._draw_cell(key)
        assign(self.summary_html, value=self._summary())
        if self._selected in changed:
            self._draw_detail()
        if self._waiting:
            self.live.mark()

    # -- drawing ------------------------------------------------------------------------------------

    def _tile(self, job: Job) -> str:
        """A job's tile, drawn again only when the job or the size changed."""
        drawn_from = (job.record.revision, job.step, self.thumbnail_size)
        known = self._tiles.get(job.id)
        if known is not None and known[0] == drawn_from:
            return known[1]
        tile = job_tile(job, self.thumbnail_size)
        self._tiles[job.id] = (drawn_from, tile)
        return tile

    def _content(self, job_ids: list[int]) -> str:
        return cell_html([self._tile(self._jobs[i]) for i in job_ids], size=self.thumbnail_size)

    def _draw_cell(self, key: CellKey) -> bool:
        """Draw one cell; True if that sent a message."""
        cell = self._cells.get(key)
        if cell is None:
            return False
        ids = self._layout.cell(key)
        return cell.show(ids, self._content(ids))

    def _summary(self) -> str:
        return summary_html(self._group, self._layout, _counts(self._jobs))

    def _head(self, kind: str, key: Hashable) -> w.HTML:
        head = self._heads.get((kind, key))
        if head is None:
            axis = self._layout.rows if kind == "row" else self._layout.cols
            shared = self._shared
            head = w.HTML(
                axis_html(axis[key]),
                layout=shared.row_head if kind == "row" else shared.col_head,
                style=shared.html_style,
            )
            self._heads[(kind, key)] = head
        return head

    def _arrange(self) -> set[CellKey]:
        """Lay the grid out again for a new row, column or cell; returns the cells it made. Each row
        is two grid lines: the cells' HTML, then their buttons; its heading and empty cells span both."""
        made: set[CellKey] = set()
        rows, cols = self._layout.rows.values, self._layout.cols.values
        children: list[Any] = [self._corner, *(self._head("col", c.key) for c in cols)]
        for r in rows:
            tops: list[Any] = [self._head("row", r.key)]
            buttons: list[Any] = []
            for c in cols:
                key = (r.key, c.key)
                if key in self._layout:
                    cell = self._cells.get(key)
                    if cell is None:
                        ids = self._layout.cell(key)
                        cell = self._cells[key] = GridCell(key, self._shared, self._select, ids, self._content(ids))
                        made.add(key)
                        if (filler := self._fillers.pop(key, None)) is not None:
                            filler.close()
                    tops.append(cell.html)
                    buttons.append(cell.button)
                else:
                    filler = self._fillers.get(key)
                    if filler is None:
                        filler = self._fillers[key] = w.HTML(layout=self._shared.filler, style=self._shared.html_style)
                    tops.append(filler)
            children += tops + buttons
        assign(self.grid_box.layout, grid_template_columns=f"repeat({len(cols) + 1}, max-content)")
        assign(self.grid_box, children=tuple(children))
        self._arranged = self._layout.shape_changes
        return made

    def _select(self, key: CellKey) -> None:
        self._selected = key
        self._draw_detail()

    def _draw_detail(self) -> None:
        if self._selected is None:
            return
        entries = []
        for job_id in self._layout.cell(self._selected):
            job = self._jobs[job_id]
            record = job.record
            path = record.images[0] if record.status is JobStatus.COMPLETE and record.images else None
            entries.append(
                DetailEntry(
                    record=record,
                    step=job.step,
                    image_uri=thumbnail_uri(path, self.detail_size) if path else None,
                    image_info=_image_text(path) if path else {},
                )
            )
        assign(self.detail_html, value=detail_html(self._layout, self._selected, entries, size=self.detail_size))

    # -- display ------------------------------------------------------------------------------------

    def static_html(self) -> str:
        """The grid as it is now, as one HTML table with the thumbnails inline (no widgets)."""
        return table_html(
            self._layout, self._summary(), lambda key: cell.html.value if (cell := self._cells.get(key)) else ""
        )

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle: dict[str, Any] = super()._repr_mimebundle_(**kwargs) or {}
        bundle["text/html"] = self.static_html()  # what nbviewer and GitHub show
        return bundle

    def __repr__(self) -> str:
        rows, cols = self._layout.rows, self._layout.cols
        return f"<SweepGrid {self._group!r}: {len(rows)} {rows.name} x {len(cols)} {cols.name}, {len(self._jobs)} jobs>"

    def close(self) -> None:
        """Stop following the queue and close the grid and every widget in it."""
        # getattr: close() also runs from __del__ of a grid whose constructor failed half-way
        extra: list[Any] = [*getattr(self, "_fillers", {}).values(), *getattr(self, "_heads", {}).values()]
        extra += [part for cell in getattr(self, "_cells", {}).values() for part in (cell.html, cell.button)]
        if hasattr(self, "_shared"):
            extra += [self._corner, *self._shared.widgets()]
        self._close_all(extra)
