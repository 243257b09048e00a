"""The widgets without a browser: ipywidgets' recording comm stands in for the frontend.

ipywidgets' own tests swap the comm for a ``DummyComm`` that keeps every message it is asked to
send (``ipywidgets.widgets.tests.utils``); we do the same, giving each widget its own comm id, and
count the messages to show that a thousand events make a handful of updates. The tests are async
so that the queue runs on the test's event loop, as it runs on the kernel's loop in Jupyter.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import comm
import pytest
from ipywidgets import Widget
from ipywidgets.widgets.tests.utils import DummyComm, setup_test_comm, teardown_test_comm
from ipywidgets.widgets.widget import _instances as live_widgets
from PIL import Image

from imgnb import ImageQueue, JobFailed, JobStatus
from imgnb.core import bulk_events
from imgnb.core.describe import ordinal
from imgnb.core.records import JobRecord
from imgnb.testing import FakeGenerator
from imgnb.widgets import JobCard, QueueBoard
from imgnb.widgets import display as display_module
from imgnb.widgets.format import StepClock, duration, job_view

MakeQueue = Callable[..., ImageQueue]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture
def comms() -> Iterator[list[DummyComm]]:
    """Every widget made during the test gets a recording comm; the list holds them in order."""
    made: list[DummyComm] = []
    bundle = Widget._repr_mimebundle_
    setup_test_comm()
    Widget._repr_mimebundle_ = bundle  # setup_test_comm disables it; the display hooks under test need it

    def create_comm(**kwargs: Any) -> DummyComm:
        recorder = DummyComm()
        recorder.comm_id = uuid.uuid4().hex  # one id per widget, as a kernel would give
        made.append(recorder)
        return recorder

    comm.create_comm = create_comm  # teardown_test_comm puts the real one back
    try:
        yield made
    finally:
        Widget.close_all()
        teardown_test_comm()


def updates(widget: Any) -> list[dict[str, Any]]:
    """The states sent in the update messages of one widget."""
    return [kw["data"]["state"] for _, kw in widget.comm.messages if kw["data"]["method"] == "update"]


async def until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out waiting"
        await asyncio.sleep(0.01)


async def settled(*widgets: JobCard | QueueBoard) -> None:
    """Wait until no redraw is pending."""
    await until(lambda: not any(w.live.pending for w in widgets))


# -- the text, from plain values -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (1, "1st"),
        (2, "2nd"),
        (3, "3rd"),
        (4, "4th"),
        (11, "11th"),  # 11, 12, 13 are 'th' although they end in 1, 2, 3
        (12, "12th"),
        (13, "13th"),
        (21, "21st"),  # from 21 on the last digit decides again
        (22, "22nd"),
        (101, "101st"),
        (111, "111th"),  # the teens of every hundred
        (1001, "1,001st"),  # thousands separated, for long queues
    ],
)
def test_ordinal(n: int, text: str) -> None:
    assert ordinal(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.2, "<1 s"),  # under half a second
        (12.4, "12 s"),  # whole seconds: a clock changes at most once a second
        (185, "3 min 05 s"),
        (7500, "2 h 05 min"),
        (-3, "<1 s"),  # a clock a little ahead of another never shows a negative time
    ],
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_step_clock_measures_mean_seconds_per_step_and_restarts_with_a_new_run() -> None:
    clock = StepClock()
    clock.observe(3, 10.0)
    assert clock.seconds_per_step() is None  # one step seen: nothing measured yet
    clock.observe(7, 12.0)
    assert clock.seconds_per_step() == 0.5
    clock.observe(1, 20.0)  # a retry starts again from step 1
    assert clock.seconds_per_step() is None


def _record(**changes: Any) -> JobRecord:
    base = JobRecord(
        id=7,
        seq=7,
        status=JobStatus.QUEUED,
        priority=1,
        group=None,
        prompt="a <b>fox</b>",
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


NOW = 2000.0


@pytest.mark.parametrize(
    ("changes", "position", "step", "per_step", "expect"),
    [
        # queued: its place, Cancel only, an empty bar
        ({}, 3, None, None, {"state": "3rd in queue", "can_cancel": True, "can_retry": False, "bar_text": ""}),
        # running: step i/n, elapsed and the ETA from the measured mean (0.5 s x 15 steps left)
        (
            {"status": JobStatus.PROCESSING, "attempts": 1, "started_at": NOW - 10},
            None,
            (5, 20),
            0.5,
            {"state": "attempt 1 of 4", "timing": "elapsed 10 s · about 8 s left", "bar_text": "step 5/20"},
        ),
        # running, no step time measured yet: the mean since the start (10 s / 5 steps x 15)
        (
            {"status": JobStatus.PROCESSING, "attempts": 1, "started_at": NOW - 10},
            None,
            (5, 20),
            None,
            {"timing": "elapsed 10 s · about 30 s left", "bar_value": 5, "bar_max": 20},
        ),
        # its worker died (lease ran out, another host): said so, no ETA, a still bar
        (
            {
                "status": JobStatus.PROCESSING,
                "attempts": 1,
                "started_at": NOW - 10,
                "progress": 0.4,
                "lease_until": NOW - 1,
            },
            None,
            None,
            None,
            {
                "state": "worker stopped responding · re-queued at its place soon",
                "timing": "",
                "bar_text": "stalled",
                "bar_style": "warning",
                "bar_value": 40,
            },
        ),
        # cancel asked while running: no second Cancel
        (
            {"status": JobStatus.PROCESSING, "cancel_requested": True, "started_at": NOW},
            None,
            None,
            None,
            {"state": "stopping", "can_cancel": False},
        ),
        # waiting to retry: which attempt failed, and when the next one starts
        (
            {"status": JobStatus.PENDING, "attempts": 1, "run_at": NOW + 3, "error": "boom"},
            None,
            None,
            None,
            {"state": "attempt 1 of 4 failed", "timing": "in 3 s", "error": "boom", "can_cancel": True},
        ),
        # failed: the error escaped, Retry only, a red bar
        (
            {"status": JobStatus.ERROR, "attempts": 4, "error": "bad <input> & more"},
            None,
            None,
            None,
            {"error": "bad &lt;input&gt; &amp; more", "can_retry": True, "can_cancel": False, "bar_style": "danger"},
        ),
        # complete: the image, a full green bar, how long it took
        (
            {
                "status": JobStatus.COMPLETE,
                "attempts": 1,
                "images": ("/x.png",),
                "started_at": NOW - 4,
                "finished_at": NOW,
            },
            None,
            None,
            None,
            {"image": "/x.png", "bar_text": "done", "bar_style": "success", "timing": "took 4 s", "can_retry": False},
        ),
    ],
)
def test_job_view(
    changes: dict[str, Any],
    position: int | None,
    step: tuple[int, int] | None,
    per_step: float | None,
    expect: dict[str, Any],
) -> None:
    view = job_view(_record(**changes), position=position, step=step, now=NOW, seconds_per_step=per_step)
    assert "a &lt;b&gt;fox&lt;/b&gt;" in view.title
    for name, value in expect.items():
        actual = getattr(view, name)
        assert (value in actual) if isinstance(value, str) and value else actual == value, (name, actual)


# -- JobCard ----------------------------------------------------------------------------------------


async def test_card_counts_down_the_queue_then_shows_progress_and_thumbnail(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str
) -> None:
    q = make_queue(db_path, generator=FakeGenerator(steps=3, step_time=0.1, size=300), start=False)
    jobs = [q.submit(p) for p in ("first", "second", "third")]
    card = jobs[2].widget()
    assert isinstance(card, JobCard) and card.job is jobs[2]
    states = [card.status_html.value]
    card.status_html.observe(lambda change: states.append(change["new"]), "value")
    bars = []
    card.progress_bar.observe(lambda change: bars.append(change["new"]), "description")
    assert "3rd in queue" in card.status_html.value
    assert not card.cancel_button.disabled and card.retry_button.disabled
    assert card.thumbnail.layout.display == "none"

    q.start()
    await jobs[2]
    await until(lambda: "complete" in card.status_html.value)
    places = [p for s in states for p in ("3rd", "2nd", "1st") if f"{p} in queue" in s]
    assert list(dict.fromkeys(places)) == ["3rd", "2nd", "1st"]  # moved up as the jobs ahead ran
    assert any("processing" in s for s in states)
    assert {b for b in bars if b.startswith("step")} <= {"step 1/3", "step 2/3", "step 3/3"}
    assert bars[-1] == "done" and card.progress_bar.bar_style == "success"
    assert card.cancel_button.disabled and card.retry_button.disabled
    with Image.open(io.BytesIO(card.thumbnail.value)) as thumb:
        assert thumb.format == "PNG" and thumb.size == (128, 128)  # 300 px shrunk to the thumbnail
    assert card.thumbnail.layout.display == ""


async def test_progress_bar_follows_the_steps_with_an_eta(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str
) -> None:
    q = make_queue(db_path, generator=FakeGenerator(steps=8, step_time=0.12), start=False)
    job = q.submit("slow")
    card = JobCard(job)
    seen: list[tuple[int, int, str]] = []
    card.progress_bar.observe(
        lambda _: seen.append((card.progress_bar.value, card.progress_bar.max, card.progress_bar.description)),
        "description",  # set last in a redraw
    )
    q.start()
    await until(lambda: "left" in card.status_html.value)  # an ETA once two steps were timed
    assert "elapsed" in card.status_html.value
    await job
    await settled(card)
    running = [(v, top, d) for v, top, d in seen if d.startswith("step")]
    assert len(running) >= 3  # several steps shown on the way ...
    assert all(top == 8 and d == f"step {v}/8" for v, top, d in running)
    assert [v for v, _, _ in running] == sorted(v for v, _, _ in running)  # ... in order
    assert card.progress_bar.value == card.progress_bar.max


async def test_failing_job_shows_its_error_escaped_and_retry_requeues_it(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str
) -> None:
    q = make_queue(db_path, generator=FakeGenerator())
    job = q.submit("<i>fail</i> & co", max_retries=0)
    card = JobCard(job)
    with pytest.raises(JobFailed):
        await job
    await until(lambda: card.error_html.value)
    assert "&lt;i&gt;fail&lt;/i&gt; &amp; co" in card.error_html.value and "<i>" not in card.error_html.value
    assert card.error_html.layout.display == ""
    assert "error" in card.status_html.value and card.progress_bar.bar_style == "danger"
    assert card.cancel_button.disabled and not card.retry_button.disabled

    q.pause()  # so that the retried job waits in the queue while we look
    card.retry_button.click()
    assert job.status is JobStatus.QUEUED
    await until(lambda: "1st in queue" in card.status_html.value)
    assert card.retry_button.disabled and not card.cancel_button.disabled and not card.error_html.value
    q.resume()
    with pytest.raises(JobFailed):
        await job  # it ran again (and failed again: its prompt asks for it)
    assert job.attempts == 1  # a retry by hand starts the count again


async def test_cancel_button_cancels_a_queued_job(comms: list[DummyComm], make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, generator=FakeGenerator(), start=False)
    first, second = q.submit("first"), q.submit("second")
    card = JobCard(second)
    card.cancel_button.click()
    assert second.status is JobStatus.CANCELLED and first.status is JobStatus.QUEUED
    await settled(card)
    assert "cancelled" in card.status_html.value
    assert card.cancel_button.disabled and not card.retry_button.disabled


async def test_a_thousand_steps_send_at_most_ten_updates_a_second_per_widget(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str
) -> None:
    q = make_queue(db_path, generator=FakeGenerator(steps=1000, step_time=0.001), start=False)
    job = q.submit("many small steps")
    start_card = len(comms)
    card = JobCard(job)
    start_board = len(comms)
    board = QueueBoard(q)
    built = len(comms)
    before = [len(c.messages) for c in comms]
    t0 = time.monotonic()
    q.start()
    await job
    await settled(card, board)
    elapsed = time.monotonic() - t0
    await until(lambda: len(board.running_box.children) == 0)
    sent = [len(c.messages) - b for c, b in zip(comms, before, strict=False)]
    later = [len(c.messages) for c in comms[len(before) :]]  # the board's row for the running job
    card_sent, board_sent = sent[start_card:start_board], sent[start_board:built] + later
    assert later
    assert card.live.events >= 1000  # the card saw every step ...
    assert card.live.redraws <= 10 * elapsed + 2  # ... and redrew ten times a second at most
    # per widget: one update per redraw at most, plus the final state sent once
    assert max(card_sent) <= 10 * elapsed + 2, (card_sent, elapsed)
    assert max(board_sent) <= 10 * elapsed + 2, (board_sent, elapsed)
    assert sum(card_sent) < 100 and sum(board_sent) < 100  # not a thousand
    print(
        f"\n1,000 steps in {elapsed:.2f} s: card {card.live.events} events -> {card.live.redraws} redraws, "
        f"{sum(card_sent)} messages over {len(card_sent)} models (max {max(card_sent)} per model, "
        f"{max(card_sent) / elapsed:.1f}/s); board {sum(board_sent)} messages (max {max(board_sent)} per model, "
        f"{max(board_sent) / elapsed:.1f}/s)"
    )


async def test_final_state_is_sent_once_then_the_card_stops_following(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str
) -> None:
    q = make_queue(db_path, generator=FakeGenerator(steps=2))
    subscribers = q.subscriber_count()
    job = q.submit("once")
    card = JobCard(job)
    assert q.subscriber_count() == subscribers + 1
    assert updates(card.title_html) == []  # the title never changed
    await job
    await until(lambda: updates(card.title_html))
    full = updates(card.title_html)
    assert len(full) == 1 and set(full[0]) >= {"value", "layout", "style"}  # the whole state, once
    assert q.subscriber_count() == subscribers  # a complete job changes no more
    seen = card.live.events
    await q.submit("another")  # its events were all delivered when the await returns
    assert card.live.events == seen and len(updates(card.title_html)) == 1
    card.thumbnail_size = 64  # a complete card still redraws when asked
    await settled(card)
    assert card.thumbnail.layout.width == "64px"


async def test_closing_a_card_unsubscribes(comms: list[DummyComm], make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, generator=FakeGenerator(), start=False)
    job = q.submit("waits")
    subscribers = q.subscriber_count()
    card, board = JobCard(job), QueueBoard(q)
    assert q.subscriber_count() == subscribers + 2
    card.close()
    board.close()
    assert q.subscriber_count() == subscribers
    assert card.comm is None and card.progress_bar.comm is None and card.progress_bar.style.comm is None
    assert board.comm is None and board.queued_html.comm is None

    def counts() -> tuple[int, ...]:
        return card.live.events, board.live.events, card.live.redraws, board.live.redraws

    seen = counts()
    job.cancel()  # events after close reach nobody and break nothing
    assert job.status is JobStatus.CANCELLED and counts() == seen


async def test_widgets_take_a_bulk_edit_at_once(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A board and cards open while 2,000 jobs are cancelled in one go: each looks at the bulk edit
    once (no event is made for them one by one), redraws once, and shows the outcome."""
    q = make_queue(db_path, generator=FakeGenerator(), start=False)
    jobs = q.submit_batch([{"prompt": f"p{i}"} for i in range(2000)])
    other = make_queue(db_path, start=False)
    board, card, far = QueueBoard(q), JobCard(jobs[0]), JobCard(other.get(jobs[-1].id))
    await settled(board, card)
    made: list[dict[str, Any]] = []
    real = bulk_events.JobEvent
    monkeypatch.setattr(bulk_events, "JobEvent", lambda **fields: made.append(fields) or real(**fields))
    redraws, sent = board.live.redraws, len(updates(board.header_html))
    assert q.cancel_all() == 2000
    await settled(board, card)
    assert made == []  # the widgets never asked for the events one by one
    assert board.live.events == 2000 and board.live.redraws == redraws + 1
    assert len(updates(board.header_html)) == sent + 1 and "<b>2,000</b> cancelled" in board.header_html.value
    assert "cancelled" in card.status_html.value.lower() and board.queued_box.children == ()
    await until(lambda: far.job.status is JobStatus.CANCELLED)  # seen through the database, as records
    await settled(far)
    assert "cancelled" in far.status_html.value.lower()


# -- QueueBoard --------------------------------------------------------------------------------------


async def test_board_of_a_thousand_queued_jobs_lists_twenty_and_redraws_from_memory(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = make_queue(db_path, generator=FakeGenerator(), start=False)
    jobs = q.submit_batch([{"prompt": f"prompt {i} <x>"} for i in range(1000)])
    board = q.widget()
    assert isinstance(board, QueueBoard)
    with_buttons = [row.children[0].value for row in board.queued_box.children]  # the first five, with buttons
    listed = board.queued_html.value  # the next fifteen, as a table
    assert len(with_buttons) == 5 and "1st" in with_buttons[0] and "5th" in with_buttons[4]
    assert listed.count("<tr>") == 15 and "+980 more" in listed
    assert ">6th<" in listed and ">20th<" in listed and ">21st<" not in listed and ">5th<" not in listed
    assert "prompt 0 &lt;x&gt;" in with_buttons[0] and "prompt 5 &lt;x&gt;" in listed and "<x>" not in listed
    assert "<b>1,000</b> queued" in board.header_html.value and "<b>0</b> complete" in board.header_html.value
    jobs[0].cancel()
    await settled(board)
    assert "+979 more" in board.queued_html.value and "<b>1</b> cancelled" in board.header_html.value

    def no_listing(**kwargs: object) -> None:
        raise AssertionError("a redraw must not read all the jobs again")

    monkeypatch.setattr(q.store, "list_jobs", no_listing)
    board.refresh()
    monkeypatch.undo()
    board.max_queued = 5
    await settled(board)
    assert len(board.queued_box.children) == 5 and "<tr>" not in board.queued_html.value
    assert "+994 more" in board.queued_html.value


async def test_board_pause_and_resume_buttons(comms: list[DummyComm], make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, generator=FakeGenerator())
    board = QueueBoard(q)
    assert not q.paused and board.resume_button.disabled and not board.pause_button.disabled
    board.pause_button.click()
    assert q.paused
    await settled(board)
    assert board.pause_button.disabled and not board.resume_button.disabled
    assert "paused" in board.header_html.value
    board.resume_button.click()
    assert not q.paused
    await settled(board)
    assert not board.pause_button.disabled and "running" in board.header_html.value

    idle = make_queue(db_path, generator=FakeGenerator(), start=False)  # never started: Resume starts it
    idle_board = QueueBoard(idle)
    assert not idle.started and not idle.paused and not idle_board.resume_button.disabled
    idle_board.resume_button.click()
    assert idle.started and not idle.paused


async def test_board_shows_running_jobs_and_recent_results(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str
) -> None:
    q = make_queue(db_path, generator=FakeGenerator(steps=10, step_time=0.03))
    board = QueueBoard(q)
    good = q.submit("a good one")
    bad = q.submit("please <fail>", max_retries=0)
    await until(lambda: board.running_box.children)
    _preview, label, bar = board.running_box.children[0].children
    await until(lambda: bar.description.startswith("step"))
    assert "a good one" in label.value
    await good
    with pytest.raises(JobFailed):
        await bad
    await until(lambda: len(board.recent_box.children) == 2 and not board.running_box.children)
    (new_image, new_caption), (old_image, old_caption) = (t.children for t in board.recent_box.children[:2])
    assert "please &lt;fail&gt;" in new_caption.value and "error" in new_caption.value
    assert new_image.layout.display == "none"
    assert "complete" in old_caption.value and bytes(old_image.value).startswith(b"\x89PNG")
    assert "<b>1</b> complete" in board.header_html.value and "<b>1</b> error" in board.header_html.value


# -- display hooks and static fallbacks ----------------------------------------------------------------


async def test_repr_html_shows_state_and_escapes(comms: list[DummyComm], make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, generator=FakeGenerator(), start=False)
    waiting = q.submit("<script>alert(1)</script>")
    page = waiting._repr_html_()
    assert "queued" in page and "1st in queue" in page
    assert "&lt;script&gt;" in page and "<script>" not in page
    failing = q.submit("fail <b>now</b>", max_retries=0)
    done = q.submit("a fox")
    q.start()
    with pytest.raises(JobFailed):
        await failing
    await done
    page = failing._repr_html_()
    assert "error" in page and "fail &lt;b&gt;now&lt;/b&gt;" in page and "<b>now</b>" not in page
    page = done._repr_html_()
    assert "complete" in page and 'src="data:image/png;base64,' in page
    page = q._repr_html_()
    assert "<b>2</b> complete" in page and "<b>1</b> error" in page and "nothing queued" in page


async def test_text_plain_of_a_finished_job_is_stable(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = make_queue(db_path, generator=FakeGenerator())
    job = q.submit("a fox", seed=3)
    await job
    first = job._repr_mimebundle_()
    assert first["text/plain"] == "<Job 1 complete: 'a fox'>"
    assert WIDGET_VIEW not in first  # no kernel here: the fallbacks alone, no widget made for nothing
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)  # an hour later
    later = job._repr_mimebundle_()
    monkeypatch.undo()
    assert later["text/plain"] == first["text/plain"] and later["text/html"] == first["text/html"]
    assert q._repr_mimebundle_()["text/plain"] == "<ImageQueue running: 1 complete>"


async def test_bundle_in_a_kernel_carries_the_live_widget(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(display_module, "in_kernel", lambda: True)
    q = make_queue(db_path, generator=FakeGenerator(), start=False)
    job = q.submit("shown")
    bundle = job._repr_mimebundle_()
    card = live_widgets[bundle[WIDGET_VIEW]["model_id"]]
    assert isinstance(card, JobCard) and card.job is job
    assert bundle["text/plain"] == "<Job 1 queued, 1st in queue: 'shown'>" and "queued" in bundle["text/html"]
    assert job._repr_mimebundle_()[WIDGET_VIEW] == bundle[WIDGET_VIEW]  # shown again: the same live card
    assert job.widget() is card
    card.close()
    assert job.widget() is not card  # a closed card is replaced
    board_bundle = q._repr_mimebundle_()
    board = live_widgets[board_bundle[WIDGET_VIEW]["model_id"]]
    assert isinstance(board, QueueBoard) and q.widget() is board
    assert board_bundle["text/plain"] == "<ImageQueue not started: 1 queued>"


async def test_live_preview_in_the_card_and_the_board_then_the_result(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str
) -> None:
    q = make_queue(db_path, generator=FakeGenerator(steps=40, step_time=0.02, previews=True), start=False)
    job = q.submit("previewed")
    assert job.preview is None  # before its first step
    card, board = JobCard(job), QueueBoard(q)
    greys: set[int] = set()
    q.subscribe(lambda e: greys.add(job.preview.getpixel((0, 0))[0]) if job.preview is not None else None)
    q.start()
    await until(lambda: job.preview is not None and job.preview.getpixel((0, 0))[0] > 0)
    await until(lambda: card.thumbnail.format == "jpeg" and bytes(card.thumbnail.value)[:2] == b"\xff\xd8")
    preview_box = board.running_box.children[0].children[0]
    await until(lambda: preview_box.layout.display == "" and bytes(preview_box.value)[:2] == b"\xff\xd8")
    await job
    assert len(greys) > 10  # the preview followed the steps
    assert job.preview is None  # the result replaces it
    await until(lambda: card.thumbnail.format == "png" and bytes(card.thumbnail.value).startswith(b"\x89PNG"))


# -- QueueBoard over a long history: buttons, pruning, and reads that cost a page ----------------------


def row_labels(board: QueueBoard) -> list[str]:
    return [row.children[0].value for row in board.queued_box.children]


async def test_board_row_buttons_cancel_and_move_to_the_front(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str
) -> None:
    gen = FakeGenerator()
    q = make_queue(db_path, generator=gen, start=False)
    jobs = q.submit_batch([{"prompt": f"job {i}"} for i in range(8)])
    board = QueueBoard(q)
    rows = board.queued_box.children
    assert len(rows) == 5 and "#1 job 0" in row_labels(board)[0]
    (_, first_front, _), (_, second_front, second_cancel) = rows[0].children, rows[1].children
    assert first_front.disabled and not second_front.disabled  # the first is at the front already
    second_cancel.click()  # job 1
    assert jobs[1].status is JobStatus.CANCELLED and jobs[0].position == 1 and jobs[2].position == 2
    await settled(board)
    assert "#3 job 2" in row_labels(board)[1] and "<b>1</b> cancelled" in board.header_html.value
    board.queued_box.children[3].children[1].click()  # "To front" of the 4th: job 4
    assert jobs[4].position == 1
    await settled(board)
    assert "1st" in row_labels(board)[0] and "#5 job 4" in row_labels(board)[0]
    assert ">6th<" in board.queued_html.value and ">job 7<" in board.queued_html.value
    q.start()
    await jobs[4]
    assert gen.calls[0] == jobs[4].id  # it ran first (listing complete jobs goes by id: job 0 may be done too)


async def test_board_retry_failed_button_and_a_refusal_notice(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str
) -> None:
    q = make_queue(db_path, generator=FakeGenerator())
    board = QueueBoard(q)
    assert board.retry_failed_button.disabled  # nothing failed
    failed = [q.submit(f"fail {i}", max_retries=0) for i in range(3)]
    await until(lambda: all(j.status is JobStatus.ERROR for j in failed))
    await until(lambda: not board.retry_failed_button.disabled)
    q.pause()
    board.retry_failed_button.click()
    assert all(j.status is JobStatus.QUEUED for j in failed) and [j.position for j in failed] == [1, 2, 3]
    await until(lambda: board.retry_failed_button.disabled and "<b>0</b> error" in board.header_html.value)
    first_cancel = board.queued_box.children[0].children[2]
    failed[0].cancel()  # gone before the board redrew: the button is refused, and says why
    first_cancel.click()
    await settled(board)
    assert "cannot go from &#x27;cancelled&#x27;" in board.header_html.value


async def test_board_opens_from_counts_and_pages_not_every_job(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = make_queue(db_path, generator=FakeGenerator(), start=False)
    jobs = q.submit_batch([{"prompt": f"old {i}"} for i in range(3000)])
    assert q.cancel_all() == 3000
    listed: list[dict[str, object]] = []
    real = q.store.list_jobs

    def spy(**kwargs: Any) -> list[JobRecord]:
        listed.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(q.store, "list_jobs", spy)
    board = QueueBoard(q)
    assert [k["status"] for k in listed] == [JobStatus.PROCESSING]  # the running ones only
    assert "<b>3,000</b> cancelled" in board.header_html.value
    assert len(board.recent_box.children) == 8 and f"#{jobs[-1].id} " in board.recent_box.children[0].children[1].value


async def test_pruned_jobs_leave_the_board_here_and_from_another_process(
    comms: list[DummyComm], make_queue: MakeQueue, db_path: str
) -> None:
    q = make_queue(db_path, generator=FakeGenerator())
    board = QueueBoard(q)
    done = [q.submit(f"done {i}") for i in range(6)]
    for job in done:
        await job
    await until(lambda: len(board.recent_box.children) == 6 and "<b>6</b> complete" in board.header_html.value)
    assert q.prune(keep_last=4) == 2
    await until(lambda: len(board.recent_box.children) == 4 and "<b>4</b> complete" in board.header_html.value)
    other = make_queue(db_path, start=False)  # another process prunes: seen at the next second's read
    assert other.prune(keep_last=1) == 3
    await until(lambda: len(board.recent_box.children) == 1 and "<b>1</b> complete" in board.header_html.value)
    caption = board.recent_box.children[0].children[1].value
    assert f"#{done[-1].id} " in caption
