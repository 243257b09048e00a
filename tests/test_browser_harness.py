"""The browser harness really drives JupyterLab: widgets render, output shows, the kernel restarts."""

from __future__ import annotations

import asyncio
import re

import nbformat
import pytest
from playwright.sync_api import expect

from tests.fixtures.jupyterlab import LabPage, write_notebook


@pytest.mark.browser
def test_widget_and_output_render_and_kernel_restarts(lab: LabPage) -> None:
    write_notebook(
        lab.server.root_dir / "harness.ipynb",
        [
            "import ipywidgets as w; w.IntProgress(value=30, max=100)",
            "import sys; print('harness says hello from', sys.executable)",
        ],
    )
    lab.open("harness.ipynb")
    # The kernel is the one the harness installed: this very interpreter.
    expect(lab.kernel_status).to_have_text("Python 3 (imgnb tests) | Idle")

    lab.run_all()
    bar = lab.page.locator(".widget-hprogress .progress-bar")
    expect(bar).to_be_visible()
    expect(bar).to_have_attribute("style", re.compile(r"(^|;)\s*width:\s*30%"))
    # And it is drawn: the filled part is 30% of the track.
    track = lab.page.locator(".widget-hprogress .progress").first.bounding_box()
    filled = bar.bounding_box()
    assert track and filled and filled["width"] == pytest.approx(0.3 * track["width"], rel=0.05)
    lab.wait_for_text("harness says hello from")
    lab.screenshot("after-run-all")
    lab.save()
    saved = nbformat.read(lab.server.root_dir / "harness.ipynb", as_version=4)
    assert "harness says hello from" in saved.cells[1].outputs[0]["text"]

    lab.restart_kernel()
    lab.reload()
    expect(lab.kernel_status).to_have_text("Python 3 (imgnb tests) | Idle")
    lab.run_cell(1)
    lab.wait_for_text("harness says hello from")
    lab.screenshot("after-restart-and-reload")


async def test_asyncio_tests_still_run_after_a_browser_test() -> None:
    # Playwright's sync API marks its loop as running while it is alive; the `lab` fixtures stop it
    # after each test, so pytest-asyncio can run its own loop here (this test runs after the one above).
    loop = asyncio.get_running_loop()
    fired = loop.create_future()
    loop.call_later(0.01, fired.set_result, "fired")  # timers and futures work on pytest-asyncio's loop
    assert await asyncio.wait_for(fired, 5) == "fired"
