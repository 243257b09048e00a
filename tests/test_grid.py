"""The sweep grid: its layout from plain records, then the widget with a recording comm.

As in tests/test_widgets.py, every widget gets a ``DummyComm`` that keeps the messages it is asked to
send, so the tests can count them: a thousand jobs completing must send a bounded number of
messages, only for the cells that changed. The widget tests are async so that the queue runs on the
test's event loop, as it runs on the kernel's loop in Jupyter.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import html
import io
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import comm
import pytest
from ipywidgets import Widget
from ipywidgets.widgets.tests.utils import DummyComm, setup_test_comm, teardown_test_comm
from PIL import Image

from imgnb import ImageQueue, InvalidJob, JobFailed, JobStatus
from imgnb.core.records import JobRecord
from imgnb.testing import FakeGenerator
from imgnb.widgets import SweepGrid
from imgnb.widgets.grid import MAX_CELLS_PER_REDRAW, grid_html
from imgnb.widgets.sweep_html import DetailEntry, detail_html, recipe, tile_html
from imgnb.widgets.sweep_layout import UNSET, SweepLayout, check_axis, field_value

MakeQueue = Callable[..., ImageQueue]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
URI = re.compile(r'src="data:image/(jpeg|png);base64,([^"]+)"')


@pytest.fixture
def comms() -> Iterator[list[DummyComm]]:
    """Every widget made during the test gets a recording comm; the list holds them in order."""
    made: list[DummyComm] = []
    bundle = Widget._repr_mimebundle_
    setup_test_comm()
    Widget._repr_mimebundle_ = bundle  # setup_test_comm disables it; the display bundle is under test

    def create_comm(**kwargs: Any) -> DummyComm:
        recorder = DummyComm()
        recorder.comm_id = uuid.uuid4().hex
        made.append(recorder)
        return recorder

    comm.create_comm = create_comm
    try:
        yield made
    finally:
        Widget.close_all()
        teardown_test_comm()


async def until(predicate: Callable[[], object], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out waiting"
        await asyncio.sleep(0.01)


async def settled(grid: SweepGrid) -> None:
    await until(lambda: not grid.live.pending)


def images_in(markup: str) -> list[Image.Image]:
    found = []
    for _, data in URI.findall(markup):
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            im.load()
            found.append(im)
    return found


# -- the layout, from plain records -------------------------------------------------------------------


def _record(job_id: int, **changes: Any) -> JobRecord:
    base = JobRecord(
        id=job_id,
        seq=job_id,
        status=JobStatus.QUEUED,
        priority=1,
        group="sweep",
        prompt="a fox",
        params={},
        seed=1,
        metadata={},
        timeout=None,
        max_retries=3,
        created_at=1000.0,
        updated_at=1000.0,
        run_at=1000.0,
    )
    return replace(base, **changes)


def test_numbers_sort_numerically_strings_in_first_seen_order_and_missing_values_last() -> None:
    records = [
        _record(1, prompt="zebra", params={"guidance_scale": 11}),
        _record(2, prompt="apple", params={"guidance_scale": 3}),
        _record(3, prompt="zebra", params={"guidance_scale": 7.5}),
        _record(4, prompt="mango", params={}),  # no guidance_scale: "(not set)", last
        _record(5, prompt="apple", params={"guidance_scale": 3.0}),  # 3.0 is the column of 3
    ]
    layout = SweepLayout("prompt", "guidance_scale")
    layout.place_all(reversed(records))  # placed in id order whatever order they come in
    assert [v.label for v in layout.rows.values] == ["zebra", "apple", "mango"]  # not alphabetical
    assert [v.label for v in layout.cols.values] == ["3", "7.5", "11", "(not set)"]  # not 11 < 3 as text
    apple, three = layout.rows.values[1].key, layout.cols.values[0].key
    assert layout.cell((apple, three)) == [2, 5]
    assert len(layout) == 4 and layout.shape_changes == 4


def test_fields_are_prompt_seed_model_parameters_and_metadata_with_dotted_paths() -> None:
    record = _record(
        1, prompt="p", seed=9, params={"steps": 20, "model": "sd-1.5"}, metadata={"lora": {"name": "ink", "w": 0.8}}
    )
    assert field_value(record, "prompt") == "p" and field_value(record, "seed") == 9
    assert field_value(record, "steps") == 20 and field_value(record, "model") == "sd-1.5"
    assert field_value(record, "lora.name") == "ink" and field_value(record, "lora.w") == 0.8
    assert field_value(record, "lora") == {"name": "ink", "w": 0.8}
    assert field_value(record, "lora.rank") is UNSET and field_value(record, "cfg") is UNSET

    @dataclass(frozen=True, kw_only=True)
    class WithModel(JobRecord):  # a record that carries its model itself, as a later schema may
        model: str | None = None

    own = WithModel(**{**vars(_record(2, params={"model": "param-model"})), "model": "sdxl"})
    assert field_value(own, "model") == "sdxl"  # the record's own model comes first
    # values that are not numbers or strings (lists, dicts) still make one column each, in first-seen order
    layout = SweepLayout("prompt", "lora")
    layout.place_all([record, _record(2, metadata={"lora": {"w": 0.8, "name": "ink"}}), _record(3)])
    assert [v.label for v in layout.cols.values] == ['{"name": "ink", "w": 0.8}', "(not set)"]


def test_an_unknown_axis_is_refused_naming_the_fields_the_jobs_have() -> None:
    records = [_record(1, params={"guidance_scale": 7, "steps": 4}, metadata={"run": {"lr": 1}})]
    assert check_axis("cols", "guidance_scale", records) == "guidance_scale"
    assert check_axis("cols", "run.lr", records) == "run.lr"
    with pytest.raises(InvalidJob) as caught:
        check_axis("cols", "cfg", records)
    assert (
        str(caught.value)
        == "cols='cfg' is invalid; allowed: a field of these jobs: prompt, seed, guidance_scale, run, run.lr, steps"
    )
    with pytest.raises(InvalidJob, match="rows=3 is invalid"):
        check_axis("rows", 3, records)
    assert check_axis("rows", "anything", []) == "anything"  # no jobs yet: nothing to check against


def test_a_job_whose_value_changed_moves_to_its_new_cell() -> None:
    layout = SweepLayout("prompt", "phase")
    first = _record(1, metadata={"phase": "draft"})
    layout.place(first)
    draft = layout.cell_of(1)
    moved = layout.place(replace(first, metadata={"phase": "final"}, revision=2))
    assert layout.cell(draft) == [] and layout.cell_of(1) != draft
    assert set(moved) == {draft, layout.cell_of(1)}
    assert layout.place(replace(first, metadata={"phase": "final"}, revision=3)) == []  # unchanged: nothing to draw


def test_tiles_recipes_and_details_from_plain_values() -> None:
    running = _record(3, status=JobStatus.PROCESSING, progress=0.25)
    assert ">processing<br>25%<" in tile_html(running, step=None, image_uri=None, size=64)  # another process's job
    assert ">processing<br>3/12<" in tile_html(running, step=(3, 12), image_uri=None, size=64)
    assert ">retrying<" in tile_html(_record(4, status=JobStatus.PENDING), step=None, image_uri=None, size=64)
    odd = _record(5, prompt="it's", seed=3, params={"steps": 4, "lora-scale": 0.5})
    assert recipe(odd) == "q.submit(\"it's\", seed=3, **{'steps': 4, 'lora-scale': 0.5})"  # no name for lora-scale
    layout = SweepLayout("prompt", "seed")
    layout.place(odd)
    (key,) = [(r.key, c.key) for r in layout.rows.values for c in layout.cols.values]
    entry = DetailEntry(record=odd, image_info={"model": "tiny-sd", "scheduler": "DDIM"})
    page = detail_html(layout, key, [entry], size=256)
    assert "prompt = it&#x27;s · seed = 3" in page
    assert ">tiny-sd<" in page and ">DDIM<" in page  # what the generator wrote in the image file
    own = detail_html(layout, key, [replace(entry, record=replace(odd, params={"model": "sd-2"}))], size=256)
    assert ">sd-2<" in own and "tiny-sd" not in own  # the job's own model comes first


# -- the widget ---------------------------------------------------------------------------------------


def sweep(q: ImageQueue, prompts: list[str], seeds: tuple[int, ...], scales: tuple[float, ...], **kwargs: Any) -> None:
    q.submit_batch(
        [{"prompt": p, "seed": s, "guidance_scale": g} for p in prompts for s in seeds for g in scales],
        group="sweep",
        **kwargs,
    )


async def test_cells_are_laid_out_by_axis_values_with_labelled_axes(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str
) -> None:
    q = make_queue(db_path, generator=FakeGenerator(), start=False)
    sweep(q, ["a <b>red</b> fox", "an owl"], (1,), (11, 3, 7))
    q.submit("not in the sweep", guidance_scale=5)
    grid = q.grid("sweep", rows="prompt", cols="guidance_scale")
    assert isinstance(grid, SweepGrid) and q.grid("sweep", rows="prompt", cols="guidance_scale") is grid
    assert grid.row_values == ["a <b>red</b> fox", "an owl"] and grid.col_values == [3, 7, 11]
    assert repr(grid) == "<SweepGrid 'sweep': 2 prompt x 3 guidance_scale, 6 jobs>"
    texts = [getattr(child, "value", getattr(child, "description", "")) for child in grid.grid_box.children]
    # the corner, three column headings, then per row: its heading, three cells, three buttons
    assert len(texts) == 1 + 3 + 2 * (1 + 3 + 3)
    assert "guidance_scale →" in texts[0] and "prompt ↓" in texts[0]
    assert [re.sub("<[^>]+>", "", t) for t in texts[1:4]] == ["3", "7", "11"]
    assert "a &lt;b&gt;red&lt;/b&gt; fox" in texts[4] and "<b>red</b>" not in texts[4]  # escaped
    assert texts[8:11] == ["#2", "#3", "#1"]  # the fox at 3, 7 and 11 (submitted as 11, 3, 7)
    assert "an owl" in texts[11] and texts[15:18] == ["#5", "#6", "#4"]
    assert all("queued" in t for t in texts[5:8])
    assert "<b>6</b> queued" in grid.summary_html.value  # the job outside the group is not counted
    with pytest.raises(InvalidJob, match=r"cols='cfg' is invalid; allowed: a field of these jobs: prompt, seed"):
        q.grid("sweep", rows="prompt", cols="cfg")
    with pytest.raises(InvalidJob, match="group=None is invalid"):
        q.grid(None, rows="prompt", cols="seed")  # type: ignore[arg-type]


async def test_placeholders_show_state_and_progress_then_thumbnails(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str
) -> None:
    q = make_queue(db_path, generator=FakeGenerator(steps=6, step_time=0.03, size=200), start=False)
    sweep(q, ["a fox"], (120,), (3, 7))
    grid = q.grid("sweep", rows="prompt", cols="guidance_scale")
    cell = grid.cell("a fox", 7)
    assert cell is not None and cell.job_ids == [2]
    seen: list[str] = [cell.html.value]
    cell.html.observe(lambda change: seen.append(change["new"]), "value")
    assert ">queued<" in seen[0] and "<img" not in seen[0]
    q.start()
    for job in q.jobs(group="sweep"):
        await job
    await until(lambda: "<img" in cell.html.value)
    assert any(re.search(r"processing<br>\d/6", s) for s in seen)  # its step while it ran ...
    assert any(re.search(r'<div style="width:\d+%', s) for s in seen)  # ... on a small bar
    (thumb,) = images_in(cell.html.value)
    assert thumb.format == "JPEG" and thumb.size == (64, 64)  # 200 px shrunk to the grid's thumbnail
    assert 'title="#2 · seed 120 · complete"' in cell.html.value
    assert "<b>2</b> complete" in grid.summary_html.value


async def test_a_failed_job_shows_as_an_error(comms: list[DummyComm], make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, generator=FakeGenerator())
    sweep(q, ["please fail", "a <i>fox</i>"], (1,), (3,), max_retries=0)
    grid = q.grid("sweep", rows="prompt", cols="guidance_scale")
    failing, good = q.jobs(group="sweep")
    with pytest.raises(JobFailed):
        await failing
    await good
    cell = grid.cell("please fail", 3)
    assert cell is not None
    await until(lambda: ">error<" in cell.html.value)
    assert "background:#ffebee" in cell.html.value and "asked to fail" in cell.html.value
    assert "<b>1</b> error" in grid.summary_html.value
    grid.select("please fail", 3)
    assert "asked to fail by the prompt &#x27;please fail&#x27;" in grid.detail_html.value  # in full, escaped


async def test_several_seeds_share_a_cell_side_by_side(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str
) -> None:
    q = make_queue(db_path, generator=FakeGenerator(size=32))
    sweep(q, ["a fox", "an owl"], (100, 200, 300), (3, 7))
    grid = q.grid("sweep", rows="prompt", cols="guidance_scale")
    for job in q.jobs(group="sweep"):
        await job
    cell = grid.cell("an owl", 7)
    assert cell is not None
    await until(lambda: cell.html.value.count("<img") == 3)
    assert cell.job_ids == [8, 10, 12] and cell.button.description == "#8 +2"
    assert [f"seed {s}" in cell.html.value for s in (100, 200, 300)] == [True, True, True]
    colours = [im.convert("RGB").getpixel((8, 8)) for im in images_in(cell.html.value)]
    assert len(set(colours)) == 3  # three different images (FakeGenerator colours by seed)
    assert "display:flex;flex-wrap:wrap" in cell.html.value and "width:198px" in cell.html.value  # 3 x (64 + 2)


async def test_clicking_a_cell_shows_its_images_large_with_their_recipes(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str
) -> None:
    q = make_queue(db_path, generator=FakeGenerator(size=48))
    q.submit_batch(
        [{"prompt": "a fox", "seed": s, "guidance_scale": 7, "steps": 3} for s in (5, 6)],
        group="sweep",
        metadata={"run": "r1"},
    )
    grid = q.grid("sweep", rows="prompt", cols="guidance_scale")
    for job in q.jobs(group="sweep"):
        await job
    await settled(grid)
    assert "Click a cell" in grid.detail_html.value
    cell = grid.cell("a fox", 7)
    assert cell is not None
    cell.button.click()
    detail = grid.detail_html.value
    assert "prompt = a fox · guidance_scale = 7" in detail
    for job in q.jobs(group="sweep"):
        assert f"#{job.id} · " in detail and html.escape(recipe(job.record)) in detail
        assert html.escape(job.images[0]) in detail
    assert "q.submit(&#x27;a fox&#x27;, seed=5, guidance_scale=7, steps=3)" in detail
    assert "not recorded" in detail  # FakeGenerator names no model
    assert html.escape('{"run": "r1"}') in detail
    large = images_in(detail)
    assert [im.format for im in large] == ["PNG", "PNG"] and "width:512px" in detail  # shown at 512 px wide

    q.pause()
    q.submit("a fox", seed=7, guidance_scale=7, group="sweep")  # joins the open cell: the detail follows
    await until(lambda: "seed=7" in grid.detail_html.value)
    assert ">queued<" in grid.detail_html.value
    with pytest.raises(InvalidJob, match=r"cell=\('a fox', 99\) is invalid"):
        grid.select("a fox", 99)


async def test_jobs_submitted_later_join_the_grid_in_order(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str
) -> None:
    q = make_queue(db_path, generator=FakeGenerator(), start=False)
    sweep(q, ["a fox"], (1,), (3, 11))
    grid = q.grid("sweep", rows="prompt", cols="guidance_scale")
    layout_messages = len(grid.grid_box.comm.messages)
    q.submit("other group", guidance_scale=5, group="elsewhere")
    await settled(grid)
    assert grid.col_values == [3, 11] and len(grid.grid_box.comm.messages) == layout_messages
    sweep(q, ["an owl"], (1,), (7,))
    await until(lambda: grid.col_values == [3, 7, 11])  # a new column, between 3 and 11
    assert grid.row_values == ["a fox", "an owl"]
    assert grid.cell("a fox", 7) is None and grid.cell("an owl", 7) is not None
    roles = []
    for child in grid.grid_box.children[4:]:  # after the corner and the three column headings
        names = [
            f"{part} {r} {c}"
            for r in grid.row_values
            for c in grid.col_values
            if (cell := grid.cell(r, c)) is not None
            for part, widget in (("html", cell.html), ("button", cell.button))
            if widget is child
        ]
        roles.append(names[0] if names else "heading" if child.value.startswith("<span") else "empty")
    # each row: its heading, its cells' html, then their buttons; where no job is, one empty widget
    # spans both lines
    assert roles == [
        "heading",
        "html a fox 3",
        "empty",
        "html a fox 11",
        "button a fox 3",
        "button a fox 11",
        "heading",
        "empty",
        "html an owl 7",
        "empty",
        "button an owl 7",
    ]
    assert "<b>3</b> queued" in grid.summary_html.value


async def test_an_empty_group_fills_in_as_jobs_arrive(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str
) -> None:
    q = make_queue(db_path, generator=FakeGenerator(), start=False)
    grid = q.grid("later", rows="prompt", cols="seed")
    assert grid.row_values == [] and len(grid.grid_box.children) == 1  # the corner alone
    q.submit("a fox", seed=2, group="later")
    await until(lambda: grid.row_values == ["a fox"])
    assert grid.col_values == [2]


async def test_a_thousand_jobs_completing_send_a_bounded_number_of_messages(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str
) -> None:
    q = make_queue(db_path, generator=FakeGenerator(steps=2), start=False)
    q.submit_batch(
        [{"prompt": f"prompt {p}", "seed": 1, "guidance_scale": g} for p in range(40) for g in range(25)],
        group="sweep",
    )
    made = len(comms)
    t0 = time.perf_counter()
    grid = q.grid("sweep", rows="prompt", cols="guidance_scale")
    build = time.perf_counter() - t0
    models = len(comms) - made
    assert models < 2 * 1000 + 100  # two models a cell (its html and button) and a few shared ones
    before = [len(c.messages) for c in comms]
    start = time.monotonic()
    q.start()
    await until(lambda: q.counts()["complete"] == 1000, timeout=60)
    await settled(grid)
    elapsed = time.monotonic() - start
    sent = [len(c.messages) - b for c, b in zip(comms, before, strict=False)]
    total = sum(sent)
    cells = [grid.cell(f"prompt {p}", g) for p in range(40) for g in range(25)]
    assert all(cell is not None and "<img" in cell.html.value for cell in cells)
    assert grid.live.events >= 3000  # each job: processing, two steps, complete ...
    assert grid.live.redraws <= 10 * elapsed + 2  # ... ten redraws a second at most
    assert max(sent) <= grid.live.redraws + 1  # one message per model per redraw at most
    # only changed cells send, at most MAX_CELLS_PER_REDRAW of them per redraw, plus the summary line
    assert total <= grid.live.redraws * (MAX_CELLS_PER_REDRAW + 1) + 10
    assert total < 3 * 1000  # not one message per event
    print(
        f"\n1,000 cells: built in {build:.2f} s ({models} widget models); 1,000 jobs completed in {elapsed:.2f} s: "
        f"{grid.live.events} events -> {grid.live.redraws} redraws -> {total} messages "
        f"({total / elapsed:.0f}/s, at most {max(sent)} on one model)"
    )


async def test_static_html_is_the_same_grid_without_widgets(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str
) -> None:
    q = make_queue(db_path, generator=FakeGenerator(size=128))
    sweep(q, ["please fail", "a <b>fox</b>"], (1, 2), (3, 7), max_retries=0)
    grid = q.grid("sweep", rows="prompt", cols="guidance_scale")
    for job in q.jobs(group="sweep"):
        with pytest.raises(JobFailed) if "fail" in job.prompt else contextlib.nullcontext():
            await job
    await settled(grid)
    page = grid_html(q, "sweep", rows="prompt", cols="guidance_scale")
    assert page == grid.static_html()  # one drawing for both
    assert page.count("<tr>") == 3 and page.count("<td") == 4  # the heading row, two rows of two cells
    assert page.count("<img") == 4 and page.count(">error<") == 4
    assert "a &lt;b&gt;fox&lt;/b&gt;" in page and "<b>fox</b>" not in page
    assert all(im.format == "JPEG" and im.size == (64, 64) for im in images_in(page))
    bundle = grid._repr_mimebundle_()
    assert bundle["text/html"] == page and WIDGET_VIEW in bundle
    assert bundle["text/plain"] == "<SweepGrid 'sweep': 2 prompt x 2 guidance_scale, 8 jobs>"


async def test_thumbnail_size_and_closing(comms: list[DummyComm], make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, generator=FakeGenerator(size=128))
    sweep(q, ["a fox"], (1,), (3,))
    grid = q.grid("sweep", rows="prompt", cols="guidance_scale")
    await q.jobs(group="sweep")[0]
    cell = grid.cell("a fox", 3)
    assert cell is not None
    await until(lambda: "<img" in cell.html.value)
    grid.thumbnail_size = 32
    await until(lambda: 'width="32"' in cell.html.value)
    assert images_in(cell.html.value)[0].size == (32, 32)
    with pytest.raises(Exception, match="thumbnail_size=8 is invalid"):
        grid.thumbnail_size = 8
    subscribers = q.subscriber_count()
    grid.close()
    assert q.subscriber_count() == subscribers - 1
    assert grid.comm is None and cell.html.comm is None and cell.button.comm is None
    assert q.grid("sweep", rows="prompt", cols="guidance_scale") is not grid  # a closed grid is replaced


async def test_a_burst_of_changed_cells_is_spread_over_redraws(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str
) -> None:
    q = make_queue(db_path, generator=FakeGenerator())
    q.submit_batch([{"prompt": f"p{p}", "seed": s} for p in range(10) for s in range(20)], group="sweep")
    for job in q.jobs(group="sweep"):
        await job
    grid = q.grid("sweep", rows="prompt", cols="seed")
    await settled(grid)
    cells = [grid.cell(f"p{p}", s) for p in range(10) for s in range(20)]
    htmls = [cell.html for cell in cells if cell is not None]
    assert len(htmls) == 200 and all("<img" in h.value for h in htmls)
    before = sum(len(h.comm.messages) for h in htmls)
    drawn_in: Counter[int] = Counter()  # redraw number -> cells sent in it
    for h in htmls:
        h.observe(lambda _: drawn_in.update([grid.live.redraws]), "value")
    grid.thumbnail_size = 32  # every cell changes at once
    await until(lambda: all('width="32"' in h.value for h in htmls))
    await settled(grid)
    assert sum(len(h.comm.messages) for h in htmls) - before == 200  # each cell once ...
    assert max(drawn_in.values()) == MAX_CELLS_PER_REDRAW  # ... at most 50 a redraw ...
    assert len(drawn_in) == 200 // MAX_CELLS_PER_REDRAW  # ... over the next redraws


async def test_pending_cells_are_drawn_when_a_notebook_cell_ends(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In IPython the grid draws what is pending at the end of each cell, on behalf of that cell."""
    hooks: dict[str, list[Callable[..., None]]] = {"post_run_cell": []}

    class Events:
        def register(self, name: str, fn: Callable[..., None]) -> None:
            hooks[name].append(fn)

        def unregister(self, name: str, fn: Callable[..., None]) -> None:
            hooks[name].remove(fn)

    class Shell:
        events = Events()

    monkeypatch.setattr("IPython.get_ipython", lambda: Shell())
    q = make_queue(db_path, generator=FakeGenerator(), start=False)
    sweep(q, ["a fox"], (1,), (3,))
    grid = q.grid("sweep", rows="prompt", cols="guidance_scale")
    (flush,) = hooks["post_run_cell"]
    await settled(grid)
    grid.interval = 5.0  # the next redraw would come in five seconds ...
    cell = grid.cell("a fox", 3)
    assert cell is not None
    q.get(1).cancel()
    assert grid.live.pending and ">cancelled<" not in cell.html.value
    flush(None)  # ... but the notebook cell ended: drawn now
    assert ">cancelled<" in cell.html.value
    grid.close()
    assert hooks["post_run_cell"] == []
