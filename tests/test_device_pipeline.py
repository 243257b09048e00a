"""The device never waits for bookkeeping, and ``complete`` still means the files are on disk.

Images are written on a writer thread while the next job already runs; a job is stored complete
only after its files are written; a write that fails is the job's failure; a writer that falls
behind holds the device back rather than piling up images; and a process that dies between
writing and storing loses nothing (its job is recovered like any dead worker's).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import imgnb.queue.worker as worker_module
from imgnb import GenerationRequest, ImageQueue, JobStatus
from imgnb.core.records import Claim, EventKind, Finish, JobEvent, JobRecord
from imgnb.gen.base import OnStep
from imgnb.queue.worker import MAX_STORING
from imgnb.store import SQLStore
from imgnb.testing import FakeGenerator
from tests.fixtures.queues import wait_until
from tests.test_processes import spawn

MakeQueue = Callable[..., ImageQueue]
Save = Callable[[Path, GenerationRequest, Sequence[Image.Image]], list[str]]


@pytest.fixture
def held_writer(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """The writer waits for the returned event before writing anything."""
    release = threading.Event()
    write: Save = worker_module.save_images

    def held(folder: Path, request: GenerationRequest, images: Sequence[Image.Image]) -> list[str]:
        assert release.wait(30), "the test never released the writer"
        return write(folder, request, images)

    monkeypatch.setattr(worker_module, "save_images", held)
    yield release
    release.set()


def test_the_next_job_runs_while_the_last_one_is_written(
    make_queue: MakeQueue, db_url: str, tmp_path: Path, held_writer: threading.Event
) -> None:
    gen = FakeGenerator(steps=1)
    q = make_queue(db_url, generator=gen, start=False)
    first, second = q.submit_batch([{"prompt": "first"}, {"prompt": "second"}])
    q.start()
    wait_until(lambda: gen.calls == [first.id, second.id])  # the device went on at once
    assert first.status is JobStatus.PROCESSING  # not complete: its image is not on disk yet
    assert not list((tmp_path / "images").glob("*.png"))
    held_writer.set()
    for job in (first, second):
        job.result(timeout=10)
        assert all(os.path.exists(path) for path in job.images)


def test_a_job_submitted_while_the_last_one_is_written_starts_at_once(
    make_queue: MakeQueue, db_path: str, held_writer: threading.Event
) -> None:
    gen = FakeGenerator(steps=1)
    q = make_queue(db_path, generator=gen)
    first = q.submit("first")
    wait_until(lambda: gen.calls == [first.id])  # ran; its image waits for the writer
    second = q.submit("second")
    wait_until(lambda: gen.calls == [first.id, second.id])  # the idle worker did not wait for the writer
    assert first.status is JobStatus.PROCESSING
    held_writer.set()
    second.result(timeout=10)
    assert first.status is JobStatus.COMPLETE


def test_a_job_is_complete_only_once_its_files_are_on_disk(make_queue: MakeQueue, db_url: str) -> None:
    q = make_queue(db_url, generator=FakeGenerator(steps=1))
    jobs = {}
    on_disk: list[bool] = []

    def check(event: JobEvent) -> None:
        if event.kind is EventKind.STATUS and event.status is JobStatus.COMPLETE:
            images = jobs[event.job_id].images
            on_disk.append(bool(images) and all(os.path.exists(path) for path in images))

    q.subscribe(check)
    handles = q.submit_batch([{"prompt": f"p{i}"} for i in range(8)])
    jobs.update((job.id, job) for job in handles)
    for job in handles:
        job.result(timeout=10)
    wait_until(lambda: len(on_disk) == 8)
    assert on_disk == [True] * 8


def test_a_write_that_fails_is_the_job_failure(
    make_queue: MakeQueue, db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write: Save = worker_module.save_images
    failures = iter([OSError(28, "No space left on device")])

    def full_once(folder: Path, request: GenerationRequest, images: Sequence[Image.Image]) -> list[str]:
        for failure in failures:
            raise failure
        return write(folder, request, images)

    monkeypatch.setattr(worker_module, "save_images", full_once)
    gen = FakeGenerator(steps=1)
    q = make_queue(db_path, generator=gen)
    job = q.submit("retried")
    job.result(timeout=10)
    assert gen.calls == [job.id, job.id] and job.attempts == 2  # failed once, as a generator error would


def test_a_writer_that_falls_behind_holds_the_device(
    make_queue: MakeQueue, db_path: str, held_writer: threading.Event
) -> None:
    gen = FakeGenerator(steps=1)
    q = make_queue(db_path, generator=gen)
    jobs = q.submit_batch([{"prompt": f"p{i}"} for i in range(MAX_STORING + 3)])
    wait_until(lambda: len(gen.calls) == MAX_STORING + 1)  # the images of that many calls wait to be written
    assert [j.status for j in jobs[MAX_STORING + 1 :]] == [JobStatus.QUEUED] * 2  # not claimed meanwhile
    held_writer.set()
    for job in jobs:
        job.result(timeout=10)
    assert gen.calls == [j.id for j in jobs]


class Pairs:
    """A batching generator: the jobs of one call share a batch key."""

    def batch_key(self, request: GenerationRequest) -> str:
        return "pair"

    def generate_batch(self, requests: Sequence[GenerationRequest], on_step: OnStep) -> list[list[Image.Image]]:
        on_step(1, 1)
        return [[Image.new("RGB", (8, 8))] for _ in requests]

    def __call__(self, request: GenerationRequest, on_step: OnStep) -> list[Image.Image]:
        return self.generate_batch([request], on_step)[0]


def test_the_writer_writes_the_next_images_while_the_last_job_is_being_stored(
    make_queue: MakeQueue, db_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = make_queue(db_path, generator=Pairs(), batch_size=2, start=False)
    first, second = q.submit_batch([{"prompt": "first"}, {"prompt": "second"}])
    finish = q.store.finish
    seen: list[bool] = []

    def once_the_next_is_written(job_id: int, **outcome: Any) -> JobRecord | None:
        """The first job's finish waits (up to 5 s) for the second job's image to be on disk."""
        if job_id == first.id:
            deadline = time.monotonic() + 5
            while not (written := bool(list((tmp_path / "images").glob(f"job{second.id:06d}_*.png")))):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            seen.append(written)
        return finish(job_id, **outcome)

    monkeypatch.setattr(q.store, "finish", once_the_next_is_written)
    q.start()
    for job in (first, second):
        job.result(timeout=20)
    assert first.batch is not None and first.batch == second.batch  # one generator call made both
    assert seen == [True]  # the writer did not wait for the first job's finish


class CountingClaims(SQLStore):
    """Counts the finishes that went into a claim's transaction."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.with_a_claim = 0

    def finish_and_claim(
        self, finishes: Sequence[Finish], claim: Claim
    ) -> tuple[list[JobRecord | None], list[JobRecord]]:
        finished, claimed = super().finish_and_claim(finishes, claim)
        if claimed:
            self.with_a_claim += len(finishes)
        return finished, claimed


def test_a_busy_database_stores_written_jobs_in_the_next_claims_commit(make_queue: MakeQueue, db_path: str) -> None:
    """Short jobs keep the database thread busy: the claim the device asks for waits behind the
    last finish, and takes the jobs written meanwhile into its own transaction (one commit, not
    two). Each is complete, its files on disk, all the same."""
    store = CountingClaims(db_path)
    q = make_queue(db_path, generator=FakeGenerator(steps=1), store=store, start=False)
    jobs = q.submit_batch([{"prompt": f"p{i}"} for i in range(300)])
    q.start()
    for job in jobs:
        job.result(timeout=60)
        assert job.status is JobStatus.COMPLETE and all(Path(image).is_file() for image in job.images)
    assert store.with_a_claim > 0


def test_a_worker_killed_between_writing_and_storing_loses_nothing(
    make_queue: MakeQueue, db_path: str, tmp_path: Path
) -> None:
    client = make_queue(db_path)  # no generator: it watches, and recovers dead processes' jobs
    job = client.submit("last words", seed=3)
    proc = spawn(db_path, str(tmp_path / "runs.log"), "--die-after-write")
    assert proc.wait(timeout=30) == -signal.SIGKILL
    proc.stdout.close()  # type: ignore[union-attr]
    assert list((tmp_path / "images").glob(f"job{job.id:06d}_*.png"))  # it died with the file written
    # never complete: back at its place once the client sees the process gone, the run counted
    wait_until(lambda: job.status is JobStatus.QUEUED and job.attempts == 1)
    assert "died" in (job.error or "")
    gen = FakeGenerator(steps=1)
    make_queue(db_path, generator=gen)
    job.result(timeout=10)
    assert gen.calls == [job.id] and job.attempts == 2 and all(os.path.exists(p) for p in job.images)
