"""``imgnb worker``: run a queue's jobs on this machine's devices until stopped.

Start-up checks everything before the first claim (the factory, the devices, the database, the
pipelines), so a mistake ends the command with one line instead of failing jobs. Then it runs an
``ImageQueue`` with one pipeline per device and logs every state change of the jobs it runs.

Stopping: the first SIGTERM or SIGINT closes the queue, which hands the running jobs back to their
place in the queue (the interrupted run not counted) and stops them at their next step; then exit 0.
The close runs in a thread while the main thread waits on it, so that a second signal is handled at
once even when the close is stuck on a database that does not answer (``signals``).
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import threading
import time
from importlib import metadata
from typing import Any

from ..errors import ImgnbError
from ..queue import ImageQueue
from ..queue.models import pipeline_name
from ..store import SQLStore
from .database import open_store
from .devices import check_devices, default_device
from .failures import BadArgument, CommandError, StartFailed
from .joblog import JobLog, Lines
from .numbers import integer
from .pipelines import ModelLoader, build_pipelines, describe_pipeline, parse_factory, parse_model, resolve_factory
from .signals import StopSignals
from .text import database_label, one_line
from .worklog import StartInfo, start_line, stop_line

__all__ = ["DESCRIPTION", "EPILOG", "SUMMARY", "add_arguments", "run"]

SUMMARY = "run the jobs of a queue on this machine's devices until stopped"
DESCRIPTION = """\
Run the jobs of the queue in DB on this machine's devices, one job at a time per device, until
SIGTERM or Ctrl-C. Any number of workers on any number of machines may share one database; a
notebook's ImageQueue(DB) submits and watches. Everything is checked before the first job is
claimed: a bad argument ends the command with one line on stderr."""
EPILOG = """\
FACTORY is a callable returning a diffusers text-to-image pipeline, imported from MODULE (the current
directory is searched first). If it has a `device` parameter it is called once per --device as
FACTORY(device="cuda:1") and must put the pipeline there; otherwise it is called once per device
with no arguments and its pipeline is used where it is (nothing is moved; a pipeline on another
device than asked is refused). Each call must return a new pipeline.

models: --pipeline builds its pipelines at start-up; it runs the jobs that name no model (and the
ones naming its model, its name_or_path). Each --model NAME=MODULE:FACTORY adds a model that jobs
choose with submit(..., model="NAME"); its FACTORY is called the same way, but only when a job first
needs it on a device, and --max-loaded N (default 1) bounds how many --model models a device holds
(the least recently used is unloaded first). A failing --model factory fails that job (retried),
not the worker. A worker claims only the jobs it can run: jobs naming a model it lacks are left to
the workers that have it. --affinity N lets a device holding a model take a job for it up to N
places behind the head of the queue, to save a reload (no job is passed over more than N times).

examples:
  imgnb worker runs/jobs.db --pipeline imgnb.gen.tiny:tiny_pipeline --device cpu
  imgnb worker postgresql+psycopg://imgnb:secret@db-host/imgnb --pipeline mymodels:sdxl \\
      --device cuda:0 --device cuda:1 --images-dir /shared/imgnb-images --json
  imgnb worker postgresql+psycopg://imgnb:secret@db-host/imgnb --model sdxl=mymodels:sdxl \\
      --model flux=mymodels:flux --max-loaded 1 --affinity 8 --device cuda:0

  # mymodels.py, next to where the worker is started
  import torch
  from diffusers import StableDiffusionXLPipeline
  def sdxl(device):
      return StableDiffusionXLPipeline.from_pretrained(
          "stabilityai/stable-diffusion-xl-base-1.0", torch_dtype=torch.float16).to(device)

log: one line at start-up (database, devices, pipelines, versions), one per state change of each job
this worker runs (time, job, status, device, worker, error), one when stopping; --json writes each
as a JSON object. Errors of imgnb itself go to stderr.

stopping: SIGTERM or Ctrl-C hands running jobs back to their place in the queue (the interrupted run
not counted) and exits 0; a second signal exits at once with 128 + its number (130, 143).

exit status: 0 stopped by a signal; 2 bad arguments (unknown module or attribute, not a pipeline,
a device this machine lacks, not an imgnb database); 1 the factory raised or the database cannot be
reached (starting again later may work)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "db",
        metavar="DB",
        help="SQLite file (created if missing) or PostgreSQL URL (postgresql+psycopg://user:password@host/db)",
    )
    _add_model_arguments(parser)
    parser.add_argument(
        "--device",
        dest="devices",
        action="append",
        metavar="DEVICE",
        help="a device to run jobs on (repeat for several): cuda:0, cuda:1, mps, cpu... "
        "(default: cuda:0 when torch sees a GPU, else cpu)",
    )
    parser.add_argument(
        "--batch-size",
        type=integer(1),
        default=1,
        metavar="N",
        help="run up to N compatible waiting jobs as one pipeline call (default 1: no batching)",
    )
    parser.add_argument(
        "--images-dir",
        metavar="DIR",
        help="where PNG files are written (default: next to an SQLite file, else ./imgnb-images/<db name>); "
        "give every machine the same shared folder",
    )
    parser.add_argument(
        "--host",
        metavar="NAME",
        help="the host name this worker presents (sets IMGNB_HOST); for testing several machines on one",
    )
    parser.add_argument("--json", action="store_true", help="log one JSON object per line (for log collectors)")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """What runs the jobs: a pipeline built at start-up, named models loaded on demand, or both."""
    parser.add_argument(
        "--pipeline",
        type=parse_factory,
        metavar="MODULE:FACTORY",
        help="the callable that builds the pipeline, e.g. imgnb.gen.tiny:tiny_pipeline (see below); "
        "give it, or --model, or both",
    )
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        type=parse_model,
        default=[],
        metavar="NAME=MODULE:FACTORY",
        help="a model jobs name with model=NAME, loaded when a job first needs it (repeat for several)",
    )
    parser.add_argument(
        "--max-loaded",
        type=integer(1),
        default=1,
        metavar="N",
        help="the most --model models a device holds at once (default 1)",
    )
    parser.add_argument(
        "--affinity",
        type=integer(0),
        default=0,
        metavar="N",
        help="take a job for a model the device holds up to N places early (default 0: strict order)",
    )


def _versions() -> dict[str, str]:
    import diffusers
    import torch

    try:
        imgnb_version = metadata.version("imgnb")
    except metadata.PackageNotFoundError:
        imgnb_version = "unknown"
    return {
        "imgnb": imgnb_version,
        "torch": str(torch.__version__),
        "diffusers": str(diffusers.__version__),
        "python": platform.python_version(),
    }


def run(args: argparse.Namespace) -> int:
    if args.pipeline is None and not args.models:
        raise BadArgument("give --pipeline MODULE:FACTORY, or --model NAME=MODULE:FACTORY, or both")
    names = [m.name for m in args.models]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise BadArgument(f"--model names must differ; given more than once: {', '.join(twice)}")
    if args.host is not None:
        os.environ["IMGNB_HOST"] = args.host  # ImageQueue reads it when it names this worker
    factory = resolve_factory(args.pipeline) if args.pipeline is not None else None
    loaders = {m.name: ModelLoader(m, resolve_factory(m.factory, f"--model {m}")) for m in args.models}
    store = open_store(args.db, create=True)
    try:
        devices = check_devices(args.devices or [default_device()])
        pipelines = build_pipelines(args.pipeline, factory, devices) if factory is not None else {}
        q = _open_queue(args, store, devices, pipelines, loaders)
    except BaseException:
        store.close()
        raise
    info = StartInfo(
        database=database_label(store.url),
        devices=devices,
        pipelines={device: describe_pipeline(pipe) for device, pipe in pipelines.items()},
        factory=str(args.pipeline or ""),
        models={name: str(loader.spec.factory) for name, loader in loaders.items()},
        max_loaded=args.max_loaded,
        affinity=args.affinity,
        batch_size=args.batch_size,
        worker=q.owner,
        images_dir=str(q.images_dir.resolve()),
        versions=_versions(),
    )
    return _serve(q, info, as_json=args.json)


def _open_queue(
    args: argparse.Namespace,
    store: SQLStore,
    devices: list[str],
    pipelines: dict[str, Any],
    loaders: dict[str, ModelLoader],
) -> ImageQueue:
    """The queue, built stopped: it claims nothing until ``start()``. With ``--pipeline`` alone it
    is the one-pipeline queue; with models, the pipeline (if any) is the first model, by its name."""
    runs: dict[str, Any] = {"pipeline": pipelines}
    if loaders:
        first = {pipeline_name(next(iter(pipelines.values()))): pipelines} if pipelines else {}
        clash = set(first) & set(loaders)
        if clash:
            raise BadArgument(f"--model {clash.pop()}=...: that is the name of --pipeline's model; name it otherwise")
        runs = {"models": {**first, **loaders}, "devices": devices}
    try:
        return ImageQueue(
            args.db,
            store=store,
            **runs,
            max_loaded=args.max_loaded,
            affinity=args.affinity,
            batch_size=args.batch_size,
            images_dir=args.images_dir,
            start=False,
            headless=True,
        )
    except ImgnbError as exc:
        raise StartFailed(one_line(str(exc))) from None


def _serve(q: ImageQueue, info: StartInfo, *, as_json: bool) -> int:
    out = Lines()
    job_log = JobLog(q, out, as_json=as_json)
    q.subscribe(job_log.on_event)
    signals = StopSignals("imgnb worker")
    out.write(start_line(time.time(), info, as_json=as_json))
    q.start()
    signum = signals.wait()
    name = signal.Signals(signum).name
    out.write(stop_line(time.time(), signal_name=name, done=False, as_json=as_json))
    failure = _close(q, signals)
    job_log.finish()
    if failure is not None:
        raise CommandError(
            f"stopping failed: {type(failure).__name__}: {one_line(str(failure))}; "
            "jobs it held go back to the queue when their lease runs out"
        )
    out.write(stop_line(time.time(), signal_name=name, done=True, as_json=as_json))
    return 0


def _close(q: ImageQueue, signals: StopSignals) -> BaseException | None:
    """Close the queue in a thread and wait for it: the main thread stays free for a second signal."""
    failures: list[BaseException] = []

    def close() -> None:
        try:
            q.close()
        except BaseException as exc:
            failures.append(exc)

    closing = threading.Thread(target=close, name="imgnb-close")
    closing.start()
    signals.join(closing)
    return failures[0] if failures else None
