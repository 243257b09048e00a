"""The sweep grid in a real JupyterLab and Chromium: it fills in live, shows errors, opens a cell large,
and a thousand cells fill in without freezing the page.

Each test submits a sweep to a queue made with ``start=False``, shows the grid, starts the queue and
waits (on what the page shows, never on a clock) for the cells to fill. Screenshots land in the
test's temporary folder.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Locator, expect

from tests.fixtures.jupyterlab import LabPage, write_notebook

OPEN = (
    "from imgnb import ImageQueue\n"
    "from imgnb.testing import FakeGenerator\n"
    "q = ImageQueue('runs/{name}.db', generator=FakeGenerator(steps=10, step_time={step_time}, size=96), start=False)\n"
)

# Every main-thread task over 50 ms, as Chromium reports them: what a person feels as a frozen page.
_WATCH_LONG_TASKS = """
() => {
  window.__imgnbLongTasks = [];
  new PerformanceObserver(list => {
    for (const entry of list.getEntries()) window.__imgnbLongTasks.push(entry.duration);
  }).observe({type: 'longtask', buffered: false});
}
"""


def _output(lab: LabPage, cell: int) -> Locator:
    return lab.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").nth(cell).locator(".jp-OutputArea")


@pytest.mark.browser
def test_grid_fills_in_live_and_a_cell_opens_large(lab: LabPage) -> None:
    write_notebook(
        lab.server.root_dir / "grid.ipynb",
        [
            OPEN.format(name="grid", step_time=0.05)
            + "jobs = q.submit_batch([{'prompt': p, 'seed': s, 'guidance_scale': g}\n"
            "    for p in ['a red fox', 'a blue whale', 'please fail'] for s in (120, 240) for g in (3, 7)],\n"
            "    group='sweep', max_retries=0)",
            "grid = q.grid('sweep', rows='prompt', cols='guidance_scale')\ngrid",
            "q.start()",
        ],
    )
    lab.page.set_viewport_size({"width": 1280, "height": 1600})
    lab.open("grid.ipynb")
    lab.run_cell(0)
    lab.run_cell(1)
    grid = _output(lab, 1)
    expect(grid).to_contain_text("guidance_scale →")
    expect(grid).to_contain_text("prompt ↓")
    for label in ("a red fox", "a blue whale", "please fail"):
        expect(grid).to_contain_text(label)
    expect(grid.get_by_text("queued", exact=True)).to_have_count(12)  # one placeholder per job
    expect(grid.locator("img")).to_have_count(0)
    lab.screenshot("1-queued")

    lab.run_cell(2)
    expect(grid).to_contain_text("complete", timeout=30_000)
    expect(grid.locator("img")).to_have_count(8, timeout=30_000)  # the fox and the whale, 2 seeds x 2 scales
    expect(grid).to_contain_text("asked to fail", timeout=30_000)  # the failed cells say why
    expect(grid).to_contain_text("8 complete")
    expect(grid).to_contain_text("4 error")
    lab.screenshot("2-filled")

    grid.locator("button", has_text="#2 +1").click()  # jobs 2 and 4: the fox at scale 7, both seeds
    detail = grid.locator(".widget-html", has_text="again")
    expect(detail).to_contain_text("prompt = a red fox · guidance_scale = 7")
    expect(detail).to_contain_text("q.submit('a red fox', seed=120, guidance_scale=7)")
    expect(detail).to_contain_text("q.submit('a red fox', seed=240, guidance_scale=7)")
    expect(detail.locator("img")).to_have_count(2)
    lab.screenshot("3-detail", full_page=True)


@pytest.mark.browser
def test_a_thousand_cells_fill_in_without_freezing_the_page(lab: LabPage) -> None:
    write_notebook(
        lab.server.root_dir / "grid1000.ipynb",
        [
            OPEN.format(name="grid1000", step_time=0)
            + "jobs = q.submit_batch([{'prompt': f'prompt {p}', 'seed': 10 * g, 'guidance_scale': g}\n"
            "    for p in range(40) for g in range(25)], group='big')",
            "grid = q.grid('big', rows='prompt', cols='guidance_scale')\ngrid",
            "q.start()",
        ],
    )
    lab.page.set_viewport_size({"width": 1280, "height": 1200})
    lab.open("grid1000.ipynb")
    lab.run_cell(0)
    lab.page.evaluate(_WATCH_LONG_TASKS)
    start = lab.page.evaluate("() => performance.now()")
    lab.run_cell(1)
    grid = _output(lab, 1)
    expect(grid.locator(".widget-button")).to_have_count(1000, timeout=60_000)
    shown = lab.page.evaluate("() => performance.now()")
    lab.run_cell(2)
    expect(grid).to_contain_text("1,000 complete", timeout=60_000)
    expect(grid.locator("img")).to_have_count(1000, timeout=30_000)
    filled = lab.page.evaluate("() => performance.now()")
    long_tasks: list[float] = lab.page.evaluate("() => window.__imgnbLongTasks")
    lab.screenshot("1000-cells")
    print(
        f"\n1,000 cells in Chromium: shown in {(shown - start) / 1000:.1f} s, filled {(filled - shown) / 1000:.1f} s "
        f"later; {len(long_tasks)} main-thread tasks over 50 ms, the longest {max(long_tasks, default=0):.0f} ms"
    )
    # the page stayed usable: a click on a cell answers while the grid is full
    grid.locator("button", has_text="#1000").click()
    expect(grid.locator(".widget-html", has_text="again")).to_contain_text("prompt = prompt 39 · guidance_scale = 24")
