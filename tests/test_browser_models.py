"""Several models in a real JupyterLab and Chromium: a model loading shows on the board and on the
card of the job that waits for it, a running job's preview changes in its card as the steps go,
and a second model loads in place of the first.

The generators are ``FakeGenerator``s with previews (grey getting lighter step by step), made by
loaders that sleep as a checkpoint read would: no torch in the kernel, and the loads last long
enough to be seen.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Locator, expect

from tests.fixtures.jupyterlab import LabPage, write_notebook

CELLS = [
    "import time\n"
    "from imgnb import ImageQueue\n"
    "from imgnb.testing import FakeGenerator\n"
    "def load_a(device):\n"
    "    time.sleep(2)\n"
    "    return FakeGenerator(steps=40, step_time=0.1, size=64, previews=True)\n"
    "def load_b(device):\n"
    "    time.sleep(2)\n"
    "    return FakeGenerator(steps=10, step_time=0.1, size=64, previews=True)\n"
    "q = ImageQueue('runs/models.db', models={'a': load_a, 'b': load_b}, devices=['gpu0'], start=False)\n"
    "q",
    "fox = q.submit('a red fox', model='a', max_retries=0)\nfox",
    "owl = q.submit('a green owl', model='b', max_retries=0)\nowl",
    "q.start()",
]


@pytest.mark.browser
def test_a_preview_changes_in_a_card_and_a_second_model_loads(lab: LabPage) -> None:
    write_notebook(lab.server.root_dir / "models.ipynb", CELLS)
    lab.page.set_viewport_size({"width": 1280, "height": 2000})
    lab.open("models.ipynb")

    def output(cell: int) -> Locator:
        return lab.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").nth(cell).locator(".jp-OutputArea")

    for cell in range(3):
        lab.run_cell(cell)
    board, fox, owl = output(0), output(1), output(2)
    expect(board).to_contain_text("gpu0 · holds no model")
    expect(fox).to_contain_text("1st in queue")
    expect(owl).to_contain_text("2nd in queue")
    lab.screenshot("1-queued")

    lab.run_cell(3)  # start: model a loads for the fox
    expect(board).to_contain_text(re.compile(r"gpu0 · loading a on gpu0 · (<1|\d+) s"), timeout=30_000)
    expect(fox).to_contain_text("loading a on gpu0")
    lab.screenshot("2-loading-a")

    preview = fox.locator("img").first
    expect(fox).to_contain_text(re.compile(r"step \d+/40"), timeout=30_000)
    expect(preview).to_be_visible()
    first = preview.get_attribute("src")
    assert first
    expect(preview).not_to_have_attribute("src", first, timeout=10_000)  # a newer preview replaced it
    lab.screenshot("3-preview")

    # the owl needs model b: it loads in place of a (one model per device)
    expect(board).to_contain_text("loading b on gpu0", timeout=30_000)
    expect(owl).to_contain_text("loading b on gpu0")
    expect(fox).to_contain_text("complete")
    lab.screenshot("4-loading-b")
    expect(owl).to_contain_text("complete", timeout=30_000)
    expect(board).to_contain_text(re.compile(r"gpu0 · holds b · 2 loads in \d+ s"))
    lab.screenshot("5-done")
