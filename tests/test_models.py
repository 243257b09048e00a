"""Several models in one queue: names checked at submit, parameters checked per model without
loading it, lazy loads, least-recently-used unloads that free the pipeline, loading shown on the
card and the board, failing loaders, the model on the job, its PNG and its record, the schema
upgrade, and model affinity with the meaning of ``job.position`` under it.

Real pipelines where the behaviour is diffusers' (the tiny ones); ``FakeGenerator`` elsewhere.
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from diffusers import PixArtSigmaPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from ipywidgets.widgets.tests.utils import DummyComm
from PIL import Image

import imgnb
from imgnb import (
    EventKind,
    ImageQueue,
    InvalidJob,
    JobEvent,
    JobFailed,
    JobStatus,
    QueueConfigError,
    UnsupportedPipeline,
    tiny_pipeline,
)
from imgnb.core.records import JobSpec
from imgnb.gen.loading import default_device
from imgnb.store import SQLStore
from imgnb.store.schema import SCHEMA_VERSION
from imgnb.testing import FakeGenerator
from imgnb.widgets import JobCard, QueueBoard
from tests.fixtures.pipelines import IGNORE_NUMPY_COPY
from tests.fixtures.queues import back_to_schema, wait_until
from tests.test_widgets import comms, until, updates  # noqa: F401 (comms: the recording-comm fixture)

MakeQueue = Callable[..., ImageQueue]


class Loader:
    """``load(device) -> FakeGenerator`` that records its calls; it may wait for a gate or fail."""

    pipeline_class = None  # marks an object as a loader, as ``@imgnb.loader()`` does

    def __init__(
        self, *, fails: int = 0, gate: threading.Event | None = None, step_time: float = 0.0, takes: float = 0.0
    ) -> None:
        self.calls: list[str] = []
        self.fails = fails
        self.gate = gate
        self.step_time = step_time
        self.takes = takes  # seconds a load lasts, as reading a checkpoint would

    def __call__(self, device: str) -> FakeGenerator:
        self.calls.append(device)
        if self.gate is not None:
            assert self.gate.wait(30)
        time.sleep(self.takes)
        if len(self.calls) <= self.fails:
            raise RuntimeError("disk on fire")
        return FakeGenerator(steps=2, step_time=self.step_time)


# -- at submit ------------------------------------------------------------------------------------


def test_an_unknown_model_is_refused_and_nothing_is_stored(make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, models={"a": FakeGenerator(), "b": Loader()}, devices=["dev"], start=False)
    assert q.models == ["a", "b"] and q.devices == ["dev"]
    with pytest.raises(InvalidJob, match=r"model='c' is invalid; allowed: one of this queue's models: 'a', 'b'"):
        q.submit("x", model="c")
    with pytest.raises(InvalidJob, match=r"model=None is invalid"):  # two models: say which
        q.submit("x")
    with pytest.raises(InvalidJob, match=r"batch item 1: model='c' is invalid"):
        q.submit_batch([{"prompt": "fine", "model": "a"}, {"prompt": "unknown", "model": "c"}])
    assert sum(q.counts().values()) == 0 and q.queued_count() == 0
    both = q.submit_batch([{"prompt": "for a"}, {"prompt": "for b", "model": "b"}], model="a")
    assert [j.model for j in both] == ["a", "b"] and q.submit("y", model="b").model == "b"


def test_one_model_may_be_left_out_and_a_generator_queue_names_none(
    make_queue: MakeQueue, db_path: str, tmp_path: Path, tiny_pipelines: dict[str, Any]
) -> None:
    q = make_queue(db_path, pipeline=tiny_pipelines["sd"], start=False)
    assert q.models == ["imgnb/tiny-sd"] and q.submit("x").model == "imgnb/tiny-sd"  # its name_or_path
    with pytest.raises(InvalidJob, match=r"one of this queue's models: 'imgnb/tiny-sd'"):
        q.submit("x", model="sdxl")
    generated = make_queue(str(tmp_path / "g.db"), generator=FakeGenerator(), start=False)
    assert generated.models == [] and generated.submit("y").model is None
    with pytest.raises(InvalidJob, match=r"this queue runs one generator, which has no model name"):
        generated.submit("z", model="a")
    watcher = make_queue(str(tmp_path / "g.db"), start=False)  # runs nothing: other processes know the models
    assert watcher.submit("for another process", model="anything").model == "anything"


def test_parameters_are_checked_against_each_models_class_without_loading_it(
    make_queue: MakeQueue, db_path: str
) -> None:
    xl, sd, plain = Loader(), Loader(), Loader()
    sd.pipeline_class = StableDiffusionPipeline  # type: ignore[assignment]  # declared as an attribute
    models = {"sdxl": imgnb.loader(StableDiffusionXLPipeline)(xl), "sd": sd, "plain": plain}
    q = make_queue(db_path, models=models, devices=["cpu"], start=False)
    assert q.submit("x", model="sdxl", prompt_2="a second prompt", steps=3).params == {
        "prompt_2": "a second prompt",
        "steps": 3,
    }
    with pytest.raises(InvalidJob, match=r"prompt_2='a second prompt' is invalid; allowed: a parameter "):
        q.submit("x", model="sd", prompt_2="a second prompt")  # SD 1.x has one text encoder
    with pytest.raises(InvalidJob, match=r"steps=0 is invalid; allowed: an integer from 1 to 1000"):
        q.submit("x", model="sdxl", steps=0)
    with pytest.raises(InvalidJob, match=r"batch item 0: num_inference_steps=4 is invalid; allowed: give it as steps"):
        q.submit_batch([{"prompt": "x", "num_inference_steps": 4}], model="sd")
    assert q.submit("x", model="plain", anything=[1]).params == {"anything": [1]}  # no class: JSON only
    assert xl.calls == sd.calls == plain.calls == []  # nothing was loaded to check
    assert q.counts()["queued"] == 2


def test_a_loader_declaring_a_pipeline_imgnb_cannot_run_is_refused(make_queue: MakeQueue, db_path: str) -> None:
    with pytest.raises(UnsupportedPipeline, match=r"PixArtSigmaPipeline\.__call__ lacks callback_on_step_end"):
        make_queue(db_path, models={"pixart": imgnb.loader(PixArtSigmaPipeline)(Loader())})
    with pytest.raises(TypeError, match=r"give a diffusers pipeline class"):
        imgnb.loader(FakeGenerator)
    with pytest.raises(QueueConfigError, match=r"give one of generator=, pipeline= and models=, not generator="):
        make_queue(db_path, generator=FakeGenerator(), models={"a": Loader()})
    with pytest.raises(QueueConfigError, match=r"run on one device; for devices=\['d0', 'd1'\] give loaders"):
        make_queue(db_path, models={"a": FakeGenerator(), "b": Loader()}, devices=["d0", "d1"])
    for bad in ({"max_loaded": 0}, {"affinity": -1}, {"affinity": True}):
        with pytest.raises(QueueConfigError, match=f"{next(iter(bad))}="):
            make_queue(db_path, models={"a": Loader()}, **bad)
    with pytest.raises(QueueConfigError, match=r"models key '' is invalid"):
        make_queue(db_path, models={"": Loader()})
    assert not Path(db_path).exists()  # refused before anything was created
    assert make_queue(db_path, models={"a": Loader()}, start=False).devices == [default_device()]


# -- loading and unloading --------------------------------------------------------------------------


def test_a_model_loads_when_a_job_first_needs_it_on_each_device(
    make_queue: MakeQueue, db_path: str, tmp_path: Path
) -> None:
    a, b = Loader(), Loader()
    q = make_queue(db_path, models={"a": a, "b": b}, devices=["dev"], max_loaded=2)
    assert a.calls == b.calls == [] and q.device_states()[0].loaded == ()
    q.submit("one", model="a").result(timeout=30)
    assert a.calls == ["dev"] and b.calls == []
    q.submit("two", model="a").result(timeout=30)
    q.submit("three", model="b").result(timeout=30)
    assert a.calls == ["dev"] and b.calls == ["dev"]  # a stays: two fit
    state = q.device_states()[0]
    assert (state.device, state.loaded, state.loads, state.loading) == ("dev", ("a", "b"), 2, None)

    per_device = Loader(step_time=0.1)
    two = make_queue(str(tmp_path / "two.db"), models={"a": per_device}, devices=["dev0", "dev1"])
    jobs = [two.submit(f"job {i}") for i in range(4)]
    for job in jobs:
        job.result(timeout=30)
    assert sorted(per_device.calls) == ["dev0", "dev1"]  # one worker and one load per device


@pytest.mark.filterwarnings(IGNORE_NUMPY_COPY)
def test_loading_another_model_unloads_the_least_recently_used_and_frees_it(
    make_queue: MakeQueue, db_path: str
) -> None:
    made: dict[str, list[weakref.ref[Any]]] = {"sd": [], "sdxl": []}

    def loader_of(family: str) -> Callable[[str], Any]:
        def load(device: str) -> Any:
            pipe = tiny_pipeline(family, device=device)
            made[family].append(weakref.ref(pipe))
            return pipe

        return load

    q = make_queue(db_path, models={"sd": loader_of("sd"), "sdxl": loader_of("sdxl")}, devices=["cpu"])
    q.submit("first", model="sd", steps=1).result(timeout=60)
    (sd,) = made["sd"]
    assert sd() is not None and q.device_states()[0].loaded == ("sd",)
    q.submit("second", model="sdxl", steps=1).result(timeout=60)
    assert sd() is None  # unloaded before sdxl loaded, and collected: nothing holds it any more
    assert q.device_states()[0].loaded == ("sdxl",)
    q.submit("third", model="sd", steps=1).result(timeout=60)
    assert len(made["sd"]) == 2 and made["sdxl"][0]() is None and q.device_states()[0].loads == 3


async def test_loading_shows_on_the_job_its_card_and_the_board(
    comms: list[DummyComm],  # noqa: F811
    make_queue: MakeQueue,
    db_path: str,
) -> None:
    gate = threading.Event()
    q = make_queue(db_path, models={"a": FakeGenerator(), "sdxl": Loader(gate=gate)}, devices=["cuda:0"], start=False)
    seen: list[JobEvent] = []
    q.subscribe(lambda e: seen.append(e) if e.kind is EventKind.MODEL else None)
    job = q.submit("a lighthouse", model="sdxl")
    card, board = JobCard(job), QueueBoard(q)
    assert "sdxl" in card.title_html.value and "cuda:0</b> · holds a<" in board.devices_html.value
    q.start()
    await until(lambda: job.loading is not None)
    assert job.loading is not None and (job.loading.model, job.loading.device) == ("sdxl", "cuda:0")
    assert q.device_states()[0].loading == job.loading
    await until(lambda: "loading sdxl on cuda:0" in card.status_html.value)
    assert "loading for " in card.status_html.value and card.progress_bar.description == "loading model"
    assert any("loading sdxl on cuda:0" in state.get("value", "") for state in updates(card.status_html))
    row = lambda: board.running_box.children[0].children[1].value if board.running_box.children else ""  # noqa: E731
    await until(
        lambda: "loading sdxl on cuda:0 · " in row() and "loading sdxl on cuda:0 · " in board.devices_html.value
    )
    gate.set()
    await job
    await until(lambda: "holds a, sdxl · 1 load in " in board.devices_html.value)
    await until(lambda: "loading" not in card.status_html.value)
    assert job.loading is None and [e.job_id for e in seen] == [job.id, job.id]  # the load began, then ended


def test_a_jobs_timeout_does_not_count_the_load_of_its_model(make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, models={"slow": Loader(takes=1.0, step_time=0.05)}, devices=["dev"])
    job = q.submit("worth the wait", timeout=0.5)  # a load of 1 s, then 2 steps of 0.05 s
    job.result(timeout=30)
    assert job.attempts == 1 and q.device_states()[0].load_seconds >= 1.0


def test_a_failing_loader_fails_the_job_and_is_retried_while_the_worker_goes_on(
    make_queue: MakeQueue, db_path: str
) -> None:
    flaky, broken = Loader(fails=1), Loader(fails=99)
    q = make_queue(db_path, models={"a": FakeGenerator(), "b": flaky, "c": broken}, devices=["dev"])
    errors: list[str] = []
    q.subscribe(lambda e: errors.append(e.error or "") if e.status is JobStatus.PENDING else None)
    doomed = q.submit("needs c", model="c", max_retries=1)
    with pytest.raises(JobFailed, match=r"ModelLoadError: loading c on dev failed: RuntimeError: disk on fire"):
        doomed.result(timeout=30)
    assert doomed.attempts == 2 and broken.calls == ["dev", "dev"]
    recovered = q.submit("needs b", model="b", max_retries=1)
    recovered.result(timeout=30)
    assert recovered.attempts == 2 and flaky.calls == ["dev", "dev"]
    assert q.submit("after", model="a").result(timeout=30)  # the worker went on
    assert any(e.startswith("ModelLoadError: loading b on dev failed") and "retrying in" in e for e in errors)
    assert q.device_states()[0].loading is None and q.device_states()[0].loaded == ("a", "b")


# -- where the model is recorded ----------------------------------------------------------------------


@pytest.mark.filterwarnings(IGNORE_NUMPY_COPY)
def test_the_model_is_named_by_the_job_its_png_and_its_record(
    tiny_pipelines: dict[str, Any], make_queue: MakeQueue, db_path: str
) -> None:
    models = {"sd": tiny_pipelines["sd"], "sdxl": lambda device: tiny_pipelines["sdxl"]}
    q = make_queue(db_path, models=models)
    assert q.devices == ["cpu"]  # where the pipeline given is
    jobs = {m: q.submit("a lighthouse", model=m, steps=2, seed=1) for m in ("sdxl", "sd")}
    for name, job in jobs.items():
        job.result(timeout=60)
        assert job.model == name
        with Image.open(job.images[0]) as image:
            assert image.text["model"] == name and json.loads(image.text["imgnb"])["model"] == name
    store = SQLStore(db_path)
    try:
        assert store.get(jobs["sdxl"].id).model == "sdxl"
    finally:
        store.close()
    assert make_queue(db_path, start=False).get(jobs["sd"].id).model == "sd"  # another queue reads it back
    unchecked = q.submit("no class declared", model="sdxl", bogus=1)  # checked when it runs, not retried
    with pytest.raises(JobFailed, match=r"bogus=1 is invalid; allowed: a parameter StableDiffusionXLPipeline takes"):
        unchecked.result(timeout=60)
    assert unchecked.attempts == 1


def test_workers_running_other_models_share_one_database(make_queue: MakeQueue, db_path: str) -> None:
    """A lab's machines hold other models: each worker takes only the jobs it can run, and a job
    for a model no worker runs yet waits for one instead of failing."""
    notebook = make_queue(db_path)  # runs nothing: submits and watches
    jobs = notebook.submit_batch([{"prompt": f"{m} {i}", "model": m} for i in range(4) for m in ("a", "b", None)])
    later = notebook.submit("for a worker not started yet", model="c")
    workers = {m: make_queue(db_path, models={m: FakeGenerator(steps=2)}, devices=[f"gpu-{m}"]) for m in "ab"}
    for job in jobs:
        job.result(timeout=30)
    assert all(j.status is JobStatus.COMPLETE and j.attempts == 1 for j in jobs)
    for job in jobs:
        if job.model is not None:
            assert job.record.owner == workers[job.model].owner
    assert later.status is JobStatus.QUEUED and later.attempts == 0 and later.position == 1
    make_queue(db_path, models={"c": FakeGenerator(steps=2)}, devices=["gpu-c"])
    assert later.result(timeout=30) is not None and later.status is JobStatus.COMPLETE


def test_batches_never_mix_models(tiny_pipelines: dict[str, Any], make_queue: MakeQueue, db_path: str) -> None:
    same = imgnb.loader(StableDiffusionPipeline)(lambda device: tiny_pipelines["sd"])
    q = make_queue(db_path, models={"sd": same, "also-sd": same}, batch_size=4, start=False)
    jobs = q.submit_batch([{"prompt": f"p{i}", "model": ["sd", "also-sd"][i % 2], "steps": 2} for i in range(4)])
    q.start()
    for job in jobs:
        job.result(timeout=60)
    batches = {model: {j.batch for j in jobs if j.model == model} for model in ("sd", "also-sd")}
    assert all(len(b) == 1 and None not in b for b in batches.values())  # each model's two jobs: one call
    assert batches["sd"] != batches["also-sd"]  # the same parameters, but not the same model


def test_a_version_2_database_is_upgraded(db_url: str, make_queue: MakeQueue) -> None:
    spec = JobSpec(prompt="old", params={}, seed=1, priority=1, group=None, timeout=None, max_retries=0, metadata={})
    store = SQLStore(db_url)
    (old,) = store.add([spec], batch_keys=[None], now=1.0)
    with store.engine.begin() as conn:  # back to schema 2: no model, no passes
        back_to_schema(conn, 5)
        for column in ("model", "passed_over"):
            conn.exec_driver_sql(f"ALTER TABLE imgnb_job DROP COLUMN {column}")
        conn.exec_driver_sql("UPDATE imgnb_meta SET schema_version = 2")
    store.close()
    q = make_queue(db_url, models={"first": FakeGenerator(), "second": FakeGenerator()}, devices=["dev"], affinity=4)
    job = q.get(old.id)
    job.result(timeout=30)
    assert job.model is None  # stored before models had names: it ran on the first model
    with Image.open(job.images[0]) as image:
        assert image.text["model"] == "first"
    assert q.submit("new", model="second").result(timeout=30)
    upgraded = SQLStore(db_url)
    try:
        with upgraded.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT schema_version FROM imgnb_meta").scalar() == SCHEMA_VERSION
        assert upgraded.get(old.id).model is None
    finally:
        upgraded.close()


# -- affinity through the queue ---------------------------------------------------------------------


@pytest.mark.parametrize(("affinity", "loads"), [(0, 6), (8, 2)])
def test_affinity_saves_model_loads(make_queue: MakeQueue, db_path: str, affinity: int, loads: int) -> None:
    q = make_queue(db_path, models={"a": Loader(), "b": Loader()}, devices=["dev"], affinity=affinity, start=False)
    jobs = [q.submit(f"job {i}", model="ab"[i % 2]) for i in range(6)]
    q.start()
    for job in jobs:
        job.result(timeout=30)
    assert q.device_states()[0].loads == loads


def test_position_is_the_place_in_run_order_and_affinity_starts_a_job_at_most_n_places_early(
    make_queue: MakeQueue, db_path: str
) -> None:
    """What ``Job.position`` documents: the place in priority-then-submit order; with affinity=N a job
    starts at a place of at most N + 1, and at most N jobs queued behind it start before it."""
    n = 2
    q = make_queue(db_path, models={"a": Loader(), "b": Loader()}, devices=["dev"], affinity=n, start=False)
    pattern = "abbabbaabbbaabab"
    jobs = [q.submit(f"job {i}", model=m, priority="high" if i == 9 else "normal") for i, m in enumerate(pattern)]
    order = sorted(jobs, key=lambda j: j.record.order_key)  # run order: the high one first, then by submit
    assert [j.position for j in order] == list(range(1, len(jobs) + 1))
    started: list[int] = []
    places_ok: list[bool] = []

    def on_event(event: JobEvent) -> None:
        if event.kind is EventKind.STATUS and event.status is JobStatus.PROCESSING:
            started.append(event.job_id)
            queued = [j for j in order if j.status is JobStatus.QUEUED]
            places_ok.append([j.position for j in queued] == list(range(1, len(queued) + 1)))

    q.subscribe(on_event)
    q.start()
    for job in jobs:
        job.result(timeout=30)
    wait_until(lambda: len(started) == len(jobs))
    assert all(places_ok)  # while they wait, the positions are the run order of those still queued
    rank = {j.id: k for k, j in enumerate(order)}
    places, overtaken = [], []
    for i, job_id in enumerate(started):
        waiting = [r for r in rank if r not in started[:i]]
        places.append(1 + sum(rank[o] < rank[job_id] for o in waiting))  # its position when it started
        overtaken.append(sum(rank[o] > rank[job_id] for o in started[:i]))
    assert started[0] == order[0].id  # the high-priority job first: priorities are never crossed
    assert max(places) == n + 1 and max(overtaken) == n  # affinity took jobs early, within its bounds
    assert q.device_states()[0].loads < pattern.count("ab") + pattern.count("ba") + 1
