"""Making a batch job's items: on this machine, the continuous-batching engine fed from the list (a new item takes a
slot as soon as one frees); on a Ray cluster, the same, inside each actor of a Ray Data `map_batches`.

Each item's file is written as `zhiyin generate` writes it (requests.write_music), atomically, and each finished
item is reported as its manifest entry; an item that fails is reported failed and the others go on.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..engine import Engine, Job
from ..requests import submit, write_music
from .jobs import Item, Problem

Report = Callable[[dict], None]  # called with each finished item's manifest entry


def entry(item: Item | Problem, status: str, **fields) -> dict:
    """An item's manifest entry."""
    seed = item.request.seed if isinstance(item, Item) else None
    base = dict(id=item.id, line=item.line, status=status, file=None, seed=seed, seconds=None, wall=None, error=None)
    base["settings"] = item.settings if isinstance(item, Item) else None
    return {**base, **fields}


def make_items(engine: Engine, processor, items: list[Item], folder: Path, model_name: str, report: Report) -> None:
    """Every item through the engine, at most its max_batch running and as many waiting (so that a freed slot is
    filled at the next step); each finished one written and reported. Ctrl-C cancels the running ones (no file is
    left half written) and is raised again."""
    waiting, running = list(reversed(items)), {}  # job -> (item, started)
    rate = engine.model.config.audio_encoder.sampling_rate
    try:
        while waiting or running:
            while waiting and len(running) < 2 * engine.max_batch:
                item = waiting.pop()
                started = time.perf_counter()
                try:
                    job = submit(engine, processor, item.request, item.request.seed, item.audio_prompt, item.melody)
                except ValueError as error:
                    report(entry(item, "failed", error=str(error), wall=round(time.perf_counter() - started, 3)))
                    continue
                running[job] = (item, started)
            finished = [job for job in running if job.finished]
            if not finished:
                time.sleep(0.02)
                continue
            for job in finished:
                item, started = running.pop(job)
                report(_finish(job, item, started, folder, model_name, rate))
    except BaseException:
        for job in running:
            job.cancel()
        raise


def _finish(job: Job, item: Item, started: float, folder: Path, model_name: str, rate: int) -> dict:
    if job.status != "succeeded":
        return entry(item, "failed", error=job.error or job.status, wall=round(time.perf_counter() - started, 3))
    try:
        audio = job.audio()[0].cpu().numpy()
        metadata = dict(prompt=item.request.prompt, model=model_name, seed=item.request.seed, id=item.id)
        metadata["settings"] = item.request.model_dump()
        write_music(folder / item.file, audio, rate, item.request.format, metadata)
    except Exception as error:  # one item's file: the others go on
        return entry(item, "failed", error=f"{type(error).__name__}: {error}")
    wall = round(time.perf_counter() - started, 3)
    return entry(item, "ok", file=item.file, seconds=round(audio.shape[-1] / rate, 3), wall=wall)


class BatchWorker:
    """A Ray Data actor: loads the model once, then makes each batch of items it is given with its own engine;
    returns their manifest entries (the driver writes the manifest, so each item has one line even when Ray runs a
    batch again after an actor died)."""

    def __init__(self, model: str, loading: dict, max_batch: int, folder: str, fault: str | None):
        import ray
        import torch

        from ..model import load_model
        from ..processing.processor import AutoProcessor

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        if cpus:
            torch.set_num_threads(max(1, int(cpus)))
        loaded = load_model(model, **loading)  # loading: from_pretrained's dtype, device, quantize, adapter
        self.engine = Engine(loaded, max_batch)
        self.processor = AutoProcessor.from_pretrained(model)
        self.model, self.folder = model, Path(folder)
        self.fault = fault  # tests (ZHIYIN_BATCH_FAULT): a file path; the first batch to find it absent makes it, dies

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        if self.fault and not os.path.exists(self.fault):
            Path(self.fault).touch()
            os._exit(1)  # as a crashed machine would: no goodbye
        items = [_item_from_json(text) for text in batch["item"]]
        entries: list[dict] = []
        make_items(self.engine, self.processor, items, self.folder, self.model, entries.append)
        return {"entry": np.array([json.dumps(e) for e in entries], dtype=object)}


def _item_to_json(item: Item) -> str:
    data = dict(line=item.line, id=item.id, request=item.request.model_dump(), settings=item.settings)
    data.update(audio_prompt=_path(item.audio_prompt), melody=_path(item.melody))
    return json.dumps(data)


def _item_from_json(text: str) -> Item:
    from ..requests import GenerationRequest

    data = json.loads(text)
    return Item(
        data["line"],
        data["id"],
        GenerationRequest.model_validate(data["request"]),
        Path(data["audio_prompt"]) if data["audio_prompt"] else None,
        Path(data["melody"]) if data["melody"] else None,
        data["settings"],
    )


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)


def make_items_on_ray(
    items: list[Item],
    folder: Path,
    report: Report,
    *,
    model: str,
    loading: dict,
    max_batch: int,
    actors: int,
    cpus: float | None,
    gpus: float | None,
) -> None:
    """The items as a Ray Data dataset, made by `actors` BatchWorkers (each loads the model once) in batches of
    2 x max_batch; each entry reported as its batch comes back. Ray must be initialised (ray.init)."""
    import logging

    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False  # the command shows its own
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    rows = [{"item": _item_to_json(item)} for item in items]
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * actors)))
    resources = {"num_cpus": cpus} if cpus is not None else {}
    if gpus:
        resources["num_gpus"] = gpus
    made = dataset.map_batches(
        BatchWorker,
        fn_constructor_kwargs=dict(
            model=model,
            loading=loading,
            max_batch=max_batch,
            folder=str(folder),
            fault=os.environ.get("ZHIYIN_BATCH_FAULT"),
        ),
        batch_size=2 * max_batch,
        batch_format="numpy",
        concurrency=actors,
        **resources,
    )
    for row in made.iter_rows():
        report(json.loads(row["entry"]))
