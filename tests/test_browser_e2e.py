"""The whole story in a real JupyterLab and Chromium: positions, progress, errors, restart.

A notebook submits three jobs and shows their cards: positions 1, 2, 3 render; they move up as the
first completes; the failing one shows its error while the next starts. Then the kernel restarts,
the page reloads, the cell that opens the queue runs again, and the positions come back from the
database: the job that was running when the kernel went is back in the queue (not shown running),
first in line, its interrupted run not counted. Screenshots land in the test's temporary folder.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Locator, expect

from tests.fixtures.jupyterlab import LabPage, write_notebook

OPEN = (
    "from imgnb import ImageQueue\n"
    "from imgnb.testing import FakeGenerator\n"
    "q = ImageQueue('runs/e2e.db', generator=FakeGenerator(steps=15, step_time=0.1), start=False)\n"
    "q"
)
CELLS = [
    OPEN,
    "first = q.submit('a red fox', max_retries=0)\nfirst",
    "failing = q.submit('please fail', max_retries=0)\nfailing",
    "third = q.submit('a green owl', max_retries=0, steps=400)\nthird",
    "q.start()",
    "q.pause()\nlater = q.submit_batch([{'prompt': f'later {i}'} for i in range(3)])\nlater[2]",
    "print('positions:', [j.position for j in q.jobs(status='queued')])",
    "print('next to run:', q.jobs(status='queued')[0].prompt, '| attempts', q.jobs(status='queued')[0].attempts)",
]


@pytest.mark.browser
def test_positions_progress_errors_and_restart_in_jupyterlab(lab: LabPage) -> None:
    write_notebook(lab.server.root_dir / "e2e.ipynb", CELLS)
    lab.page.set_viewport_size({"width": 1280, "height": 2400})
    lab.open("e2e.ipynb")

    def output(cell: int) -> Locator:
        return lab.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").nth(cell).locator(".jp-OutputArea")

    for cell in range(4):
        lab.run_cell(cell)
    first, failing, third = output(1), output(2), output(3)
    expect(first).to_contain_text("1st in queue")
    expect(failing).to_contain_text("2nd in queue")
    expect(third).to_contain_text("3rd in queue")
    lab.screenshot("1-queued")

    lab.run_cell(4)  # start
    expect(first).to_contain_text(re.compile(r"step \d+/15"), timeout=30_000)
    expect(failing).to_contain_text("1st in queue")  # moved up as the first started
    expect(third).to_contain_text("2nd in queue")
    lab.screenshot("2-first-running")
    expect(first).to_contain_text("complete", timeout=30_000)
    expect(failing).to_contain_text("asked to fail", timeout=30_000)  # its error shows ...
    expect(third).to_contain_text(re.compile(r"step \d+/400"), timeout=30_000)  # ... while the next runs
    lab.screenshot("3-error-and-next-running")

    lab.run_cell(5)  # pause, then three more jobs wait behind the running one
    expect(output(5)).to_contain_text("3rd in queue")
    lab.run_cell(6)
    expect(output(6)).to_contain_text("positions: [1, 2, 3]")
    lab.screenshot("4-before-restart")

    lab.restart_kernel()
    lab.reload()
    lab.run_cell(0)  # the cell that opens the queue: the board is rebuilt from the database
    board = output(0)
    # the owl was running when the kernel went: handed back to the head of the queue, not running
    expect(board).to_contain_text("4 queued", timeout=30_000)
    expect(board).to_contain_text("0 processing")
    for name in ("a green owl", "later 0", "later 1", "later 2"):
        expect(board).to_contain_text(name)
    lab.run_cell(6)
    expect(output(6)).to_contain_text("positions: [1, 2, 3, 4]")
    lab.run_cell(7)
    expect(output(7)).to_contain_text("next to run: a green owl | attempts 0")
    lab.screenshot("5-after-restart")


@pytest.mark.browser
def test_run_all_goes_past_a_cell_that_waits_for_a_result(lab: LabPage) -> None:
    """``job.result()`` in a cell runs the loop re-entrantly; every later cell must still run."""
    write_notebook(
        lab.server.root_dir / "run_all.ipynb",
        [
            "from imgnb import ImageQueue\nfrom imgnb.testing import FakeGenerator\n"
            "q = ImageQueue('runs/run_all.db', generator=FakeGenerator(steps=10, step_time=0.05))\n"
            "q.subscribe(lambda e: print('event', e.kind.value))",
            "job = q.submit('a fox')\nprint('images:', len(job.result(timeout=60)))",
            "other = q.submit('an owl')\nprint('again:', len(other.result(timeout=60)))",
            "print('the last cell ran')",
        ],
    )
    lab.open("run_all.ipynb")
    lab.run_all()
    lab.wait_for_text("the last cell ran", timeout=60)
    lab.wait_for_text("again: 1", timeout=5)
    lab.screenshot("run-all")
