"""The widgets in a real JupyterLab: a card and a board render and follow the queue live."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Locator, expect

from tests.fixtures.jupyterlab import LabPage, write_notebook


@pytest.mark.browser
def test_card_and_board_render_and_update_in_jupyterlab(lab: LabPage) -> None:
    write_notebook(
        lab.server.root_dir / "widgets.ipynb",
        [
            "from imgnb import ImageQueue\n"
            "from imgnb.testing import FakeGenerator\n"
            "q = ImageQueue('runs/jobs.db', generator=FakeGenerator(steps=30, step_time=0.05, size=256), start=False)\n"
            "jobs = q.submit_batch([{'prompt': p} for p in ['a red fox', 'a <b>blue</b> whale', 'please fail',"
            " 'a green owl']], max_retries=0)",
            "jobs[1]",
            "jobs[2]",
            "q",
            "q.start()",
        ],
    )
    lab.page.set_viewport_size({"width": 1280, "height": 2000})  # the whole notebook in one screenshot
    lab.open("widgets.ipynb")
    for cell in range(4):
        lab.run_cell(cell)

    def output(cell: int) -> Locator:
        return lab.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").nth(cell).locator(".jp-OutputArea")

    card, failing, board = output(1), output(2), output(3)
    expect(card).to_contain_text("2nd in queue")
    expect(card).to_contain_text("a <b>blue</b> whale")  # escaped: shown as typed
    expect(board).to_contain_text("4 queued")
    expect(board).to_contain_text("not started")
    lab.screenshot("before-start")
    lab.run_cell(4)
    expect(card).to_contain_text(re.compile(r"step \d+/30"), timeout=30_000)  # the bar follows the steps
    lab.screenshot("running")
    expect(card).to_contain_text("complete", timeout=30_000)
    expect(card.locator("img")).to_be_visible()
    expect(failing).to_contain_text("asked to fail", timeout=30_000)
    expect(failing.locator("button", has_text="Retry")).to_be_enabled()
    expect(board).to_contain_text("3 complete", timeout=30_000)
    expect(board).to_contain_text("1 error")
    expect(board.locator("img:visible")).to_have_count(3)  # the failed job has none
    lab.screenshot("done")
