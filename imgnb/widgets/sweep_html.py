"""What a sweep grid shows, as HTML strings made from plain values. Pure: no I/O.

The live ``SweepGrid`` and the static fallback (``display.sweep_table``) draw every cell, label and
detail with these functions, so the page nbviewer shows is the grid the kernel showed. Thumbnails
come in as ``data:`` URIs made by the caller. Styles are inline: notebook viewers drop style sheets.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..core.describe import short
from ..core.records import JobRecord
from ..core.states import JobStatus
from .format import STATUS_COLOURS, counts_html
from .sweep_layout import AxisValue, CellKey, SweepLayout, field_value

__all__ = [
    "DetailEntry",
    "axis_html",
    "cell_html",
    "cell_label",
    "corner_html",
    "detail_html",
    "recipe",
    "summary_html",
    "table_html",
    "tile_html",
]

PER_LINE = 4  # thumbnails side by side in one cell before the next line
LABEL_CHARS = 40
_PLACEHOLDER_TEXT = {JobStatus.PENDING: "retrying"}


def _tile_title(record: JobRecord) -> str:
    text = f"#{record.id} · seed {record.seed} · {record.status.value}"
    if record.error and record.status in (JobStatus.ERROR, JobStatus.PENDING):
        text += f": {record.error}"
    return html.escape(text)


def tile_html(record: JobRecord, *, step: tuple[int, int] | None, image_uri: str | None, size: int) -> str:
    """One job: its thumbnail once complete; before that a placeholder with its state and progress;
    a failed job's placeholder is red and says why (all of it on hover)."""
    title = _tile_title(record)
    if image_uri is not None:
        return (
            f'<img src="{image_uri}" width="{size}" height="{size}" alt="job {record.id}" title="{title}" '
            'style="object-fit:contain;display:block">'
        )
    s = record.status
    colour = STATUS_COLOURS[s]
    lines = [_PLACEHOLDER_TEXT.get(s, s.value)]
    bar = ""
    if s is JobStatus.PROCESSING:
        share, text = (
            (step[0] / step[1], f"{step[0]}/{step[1]}") if step else (record.progress, f"{record.progress:.0%}")
        )
        lines.append(text)
        bar = (
            f'<div style="margin:3px 4px 0;height:3px;background:#e3f2fd">'
            f'<div style="width:{share:.0%};height:3px;background:{colour}"></div></div>'
        )
    elif s is JobStatus.ERROR and record.error:
        lines.append(html.escape(short(record.error, 40)))
    elif s is JobStatus.COMPLETE:
        lines.append("no image")
    background = "#ffebee" if s is JobStatus.ERROR else "#fafafa"
    style = (
        f"width:{size}px;height:{size}px;box-sizing:border-box;border:1px dashed {colour};color:{colour};"
        f"background:{background};font:10px/1.25 sans-serif;text-align:center;padding-top:4px;overflow:hidden;"
        "overflow-wrap:anywhere"
    )
    return f'<div title="{title}" style="{style}">{"<br>".join(lines)}{bar}</div>'


def cell_html(tiles: Sequence[str], *, size: int) -> str:
    """A cell's jobs side by side, ``PER_LINE`` to a line: every seed of a setting at a glance."""
    if not tiles:
        return ""
    width = min(len(tiles), PER_LINE) * (size + 2)
    return f'<div style="display:flex;flex-wrap:wrap;gap:2px;width:{width}px">{"".join(tiles)}</div>'


def cell_label(job_ids: Sequence[int]) -> str:
    """The text of a cell's button: its first job, and how many more."""
    if not job_ids:
        return ""
    more = f" +{len(job_ids) - 1}" if len(job_ids) > 1 else ""
    return f"#{job_ids[0]}{more}"


def axis_html(value: AxisValue) -> str:
    """A row or column heading: the value, shortened, in full on hover."""
    text = html.escape(short(value.label, LABEL_CHARS))
    return f'<span title="{html.escape(value.label)}" style="font:12px sans-serif">{text}</span>'


def corner_html(rows: str, cols: str) -> str:
    """Which field runs down and which across, one to a line."""
    line = "display:block;white-space:nowrap"
    return (
        f'<span style="font:11px/1.4 sans-serif;color:#757575"><span style="{line}">{html.escape(cols)} →</span>'
        f'<span style="{line}">{html.escape(rows)} ↓</span></span>'
    )


def summary_html(group: str, layout: SweepLayout, counts: Mapping[str, int]) -> str:
    rows, cols = layout.rows, layout.cols
    shape = f"{len(rows)} {html.escape(rows.name)} x {len(cols)} {html.escape(cols.name)}"
    text = f"<b>Sweep {html.escape(group)}</b> · {shape} · {counts_html(counts)}"
    return f'<div style="font-family:sans-serif;line-height:1.4">{text}</div>'


def table_html(layout: SweepLayout, summary: str, cell: Callable[[CellKey], str]) -> str:
    """The whole grid as one table, for places without widgets."""
    pad = "padding:2px 4px;vertical-align:top"
    head = "".join(f'<th style="{pad}">{axis_html(c)}</th>' for c in layout.cols.values)
    body = []
    for r in layout.rows.values:
        cells = "".join(f'<td style="{pad}">{cell((r.key, c.key))}</td>' for c in layout.cols.values)
        body.append(f'<tr><th style="{pad};text-align:right">{axis_html(r)}</th>{cells}</tr>')
    corner = f'<th style="{pad}">{corner_html(layout.rows.name, layout.cols.name)}</th>'
    return (
        '<div class="imgnb-grid" style="font-family:sans-serif;border:1px solid #ddd;padding:6px;overflow:auto">'
        f'{summary}<table style="border-collapse:collapse"><tr>{corner}{head}</tr>{"".join(body)}</table></div>'
    )


def recipe(record: JobRecord) -> str:
    """The call that makes this image again: ``q.submit(prompt, seed=..., **params)``."""
    params = record.params
    if all(k.isidentifier() for k in params):
        extra = "".join(f", {k}={v!r}" for k, v in params.items())
    else:
        extra = f", **{params!r}" if params else ""
    return f"q.submit({record.prompt!r}, seed={record.seed}{extra})"


@dataclass(frozen=True, kw_only=True)
class DetailEntry:
    """One job of the clicked cell: its record, its image (large, as a URI) and the image file's text."""

    record: JobRecord
    step: tuple[int, int] | None = None
    image_uri: str | None = None
    image_info: Mapping[str, str] = field(default_factory=dict)  # PNG text: model, scheduler, ...


def _row(name: str, value: str) -> str:
    return f'<tr><td style="color:#757575;padding:1px 8px 1px 0;vertical-align:top">{name}</td><td>{value}</td></tr>'


def _entry_html(entry: DetailEntry, size: int) -> str:
    r = entry.record
    model = field_value(r, "model")
    model_text = (
        html.escape(str(model))
        if isinstance(model, str)
        else html.escape(entry.image_info.get("model", "not recorded"))
    )
    colour = STATUS_COLOURS[r.status]
    rows = [
        _row("job", f'#{r.id} · <b style="color:{colour}">{r.status.value}</b>'),
        _row("prompt", html.escape(r.prompt)),
        _row("seed", str(r.seed)),
        *(_row(html.escape(k), html.escape(repr(v))) for k, v in r.params.items()),
        _row("model", model_text),
    ]
    if "scheduler" in entry.image_info:
        rows.append(_row("scheduler", html.escape(entry.image_info["scheduler"])))
    if r.metadata:
        rows.append(_row("metadata", html.escape(json.dumps(r.metadata, sort_keys=True))))
    if r.error:
        rows.append(_row("error", f'<span style="color:#c62828">{html.escape(r.error)}</span>'))
    for path in r.images:
        rows.append(_row("image", f"<code>{html.escape(path)}</code>"))
    rows.append(_row("again", f"<code>{html.escape(recipe(r))}</code>"))
    if entry.image_uri is not None:
        # shown at ``size`` px wide whatever the file's size: a 64 px test image too is seen large
        picture = f'<img src="{entry.image_uri}" alt="job {r.id}" style="width:{size}px;max-width:100%;display:block">'
    else:
        picture = tile_html(r, step=entry.step, image_uri=None, size=min(size, 160))
    table = f'<table style="border-collapse:collapse;font-size:12px">{"".join(rows)}</table>'
    return f'<div style="display:flex;gap:12px;align-items:flex-start;margin:6px 0">{picture}{table}</div>'


def detail_html(layout: SweepLayout, key: CellKey, entries: Sequence[DetailEntry], *, size: int) -> str:
    """The clicked cell: each job's image large, with all it takes to make it again."""
    rows, cols = layout.rows, layout.cols
    heading = " · ".join(
        f"{html.escape(axis.name)} = {html.escape(axis[k].label)}" for axis, k in ((rows, key[0]), (cols, key[1]))
    )
    parts = "".join(_entry_html(e, size) for e in entries) or '<i style="color:#757575">no job in this cell</i>'
    return (
        f'<div style="font-family:sans-serif;border-top:1px solid #ddd;padding-top:6px"><b>{heading}</b>{parts}</div>'
    )
