"""`zhiyin batch --ray` on a Ray of this process (ray.init(num_cpus=2)): the same jobs give byte-identical files and
the same manifest entries as the local run, and an actor that dies has its batch run again, each item once."""

import json
import os

import pytest

from zhiyin.cli import main

from test_batch import JOBS, manifest, write_jobs

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_run(tiny_checkpoint, tmp_path_factory):
    """The jobs made without Ray: (model, folder)."""
    model, folder = str(tiny_checkpoint[0]), tmp_path_factory.mktemp("ray-jobs")
    jobs = write_jobs(folder, JOBS[:4])
    assert main(["batch", str(jobs), "-o", str(folder / "local"), "--model", model, "--quiet"]) == 1  # line 4
    return model, folder


def comparable(entries: list[dict]) -> dict:
    return {e["id"]: {k: v for k, v in e.items() if k != "wall"} for e in entries}


def same_files(a, b) -> None:
    names = sorted(n for n in os.listdir(a) if n != "manifest.jsonl")
    assert names == sorted(n for n in os.listdir(b) if n != "manifest.jsonl") and len(names) == 3
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_ray_makes_the_files_the_local_run_makes(local_ray, local_run):
    model, folder = local_run
    status = main(["batch", str(folder / "jobs.jsonl"), "-o", str(folder / "ray"), "--model", model, "--ray"])
    assert status == 1
    same_files(folder / "local", folder / "ray")
    assert comparable(manifest(folder / "ray")) == comparable(manifest(folder / "local"))


def test_an_actor_that_dies_is_replaced_and_its_batch_made_once(local_ray, local_run, monkeypatch):
    model, folder = local_run
    fault = folder / "fault"
    monkeypatch.setenv("ZHIYIN_BATCH_FAULT", str(fault))  # the first batch's actor exits without a word
    argv = ["batch", str(folder / "jobs.jsonl"), "-o", str(folder / "ray2"), "--model", model, "--quiet"]
    status = main(argv + ["--ray", "--ray-actors", "2", "--ray-num-cpus", "1", "--max-batch", "1"])
    assert status == 1
    assert fault.exists()  # an actor did die
    entries = [json.loads(line) for line in (folder / "ray2" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(e["id"] for e in entries) == sorted({e["id"] for e in entries})  # each once
    same_files(folder / "local", folder / "ray2")
    assert comparable(entries) == comparable(manifest(folder / "local"))
