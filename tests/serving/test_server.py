"""`zhiyin serve` over real HTTP: a uvicorn server on a free loopback port, on the tiny checkpoint. Every endpoint,
bad input with its status and the field it names, the token, the queue limit, cancelling, audio while it is made,
the music equal to `zhiyin generate`'s, a bounded load, and a kill -9 and restart that loses no job."""

import concurrent.futures
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import soundfile
import uvicorn

from zhiyin.cli import main
from zhiyin.serving.app import Service, create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A server in a thread of this process, on its own port and data folder."""

    def __init__(self, service: Service, token: str | None = None):
        self.service, self.port = service, free_port()
        config = uvicorn.Config(create_app(service, token), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def stop(self):
        self.client.close()
        self.server.should_exit = True
        self.thread.join(30)
        self.service.close()


@pytest.fixture
def server(model, processor, tmp_path):
    running = Running(Service(model, processor, tmp_path / "data", max_batch=4, max_duration=20.0))
    yield running
    running.stop()


def wait_done(client, id, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/generations/{id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def test_a_generation_over_http_is_the_clis_music(server, tiny_checkpoint, tmp_path, capsys):
    client = server.client
    answer = client.post("/v1/generations", json={"prompt": "80s pop", "duration": 1.2, "seed": 7, "top_k": 20})
    assert answer.status_code == 201, answer.text
    job = answer.json()
    assert job["status"] in ("queued", "running") and job["seed"] == 7 and job["id"]
    done = wait_done(client, job["id"])
    assert done["status"] == "succeeded" and done["progress"]["frames_done"] == done["progress"]["frames_total"] == 60
    audio = client.get(f"/v1/generations/{job['id']}/audio")
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
    served, rate = soundfile.read(io.BytesIO(audio.content), dtype="float32")
    cli_file = tmp_path / "cli.wav"
    assert (
        main(
            [
                "generate",
                "80s pop",
                "--model",
                str(tiny_checkpoint[0]),
                "--duration",
                "1.2",
                "--seed",
                "7",
                "--top-k",
                "20",
                "--quiet",
                "-o",
                str(cli_file),
            ]
        )
        == 0
    )
    want, want_rate = soundfile.read(cli_file, dtype="float32")
    assert rate == want_rate == 32000 and served.shape == want.shape == (1.2 * 32000,)
    assert np.array_equal(served, want)  # the same tokens, decoded, levelled and written the same way
    listing = client.get("/v1/generations").json()["generations"]
    assert listing[0]["id"] == job["id"]
    assert client.get("/v1/models").json()["models"][0]["sampling_rate"] == 32000
    assert client.get("/healthz").json()["status"] == "ok"
    metrics = client.get("/metrics").text
    assert 'zhiyin_jobs{status="succeeded"} 1' in metrics and "zhiyin_queue_length 0" in metrics
    assert client.get("/docs").status_code == 200 and "/v1/generations" in client.get("/openapi.json").text
    assert "Generate" in client.get("/").text


def test_unconditional_and_no_seed(server):
    job = server.client.post("/v1/generations", json={"prompt": None, "duration": 0.4}).json()
    assert isinstance(job["seed"], int)  # chosen and recorded
    assert wait_done(server.client, job["id"])["status"] == "succeeded"


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"prompt": "x", "duration": 1, "colour": "red"}, 422, "colour"),
        ({"prompt": "x", "duration": "long"}, 422, "duration"),
        ({"duration": 1}, 422, "prompt"),
        ({"prompt": "  ", "duration": 1}, 422, "prompt"),
        ({"prompt": "x", "duration": 0}, 422, "duration"),
        ({"prompt": "x", "duration": 21}, 422, "duration"),
        ({"prompt": "x", "duration": 1, "top_k": 0}, 422, "top_k"),
        ({"prompt": "x", "duration": 1, "top_p": 1.5}, 422, "top_p"),
        ({"prompt": "x", "duration": 1, "temperature": 0}, 422, "temperature"),
        ({"prompt": "x", "duration": 1, "guidance_scale": 0.5}, 422, "guidance_scale"),
        ({"prompt": "x", "duration": 1, "seed": -1}, 422, "seed"),
        ({"prompt": "x", "duration": 1, "format": "aiff"}, 422, "format"),
        ({"prompt": "word " * 2000, "duration": 1}, 422, "prompt"),
    ],
)
def test_bad_requests_name_the_field(server, body, status, field):
    answer = server.client.post("/v1/generations", json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["field"] == field and field in error["message"]


def test_unknown_jobs_and_audio_of_a_cancelled_job(server):
    assert server.client.get("/v1/generations/nope").status_code == 404
    assert server.client.delete("/v1/generations/nope").status_code == 404
    job = server.client.post("/v1/generations", json={"prompt": "drums", "duration": 20}).json()
    cancelled = server.client.delete(f"/v1/generations/{job['id']}").json()
    assert cancelled["status"] == "cancelled"
    assert wait_done(server.client, job["id"])["status"] == "cancelled"
    assert server.client.get(f"/v1/generations/{job['id']}/audio").status_code == 409


def test_audio_streams_while_it_is_made(server):
    job = server.client.post("/v1/generations", json={"prompt": "piano", "duration": 8, "seed": 1}).json()
    received, status_when_first = b"", None
    with server.client.stream("GET", f"/v1/generations/{job['id']}/audio") as answer:
        assert answer.headers["content-type"] == "audio/wav"
        for piece in answer.iter_bytes():
            if status_when_first is None and len(received) + len(piece) > 44:
                status_when_first = server.client.get(f"/v1/generations/{job['id']}").json()["status"]
            received += piece
    assert status_when_first == "running"  # audio came before the music was done
    assert received[:4] == b"RIFF" and received[8:12] == b"WAVE"
    assert len(received) == 44 + 8 * 32000 * 2  # all of it, as 16-bit samples
    assert wait_done(server.client, job["id"])["status"] == "succeeded"


def test_token_and_queue_limit(model, processor, tmp_path):
    running = Running(Service(model, processor, tmp_path / "data", max_batch=1, max_queue=1), token="s3cret")
    try:
        client = running.client
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/generations").status_code == 401
        assert client.get("/v1/generations", headers={"Authorization": "Bearer wrong"}).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        first = client.post("/v1/generations", json={"prompt": "a", "duration": 20}, headers=auth)
        assert first.status_code == 201
        deadline = time.monotonic() + 30
        while client.get(f"/v1/generations/{first.json()['id']}", headers=auth).json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert client.post("/v1/generations", json={"prompt": "b", "duration": 1}, headers=auth).status_code == 201
        full = client.post("/v1/generations", json={"prompt": "c", "duration": 1}, headers=auth)
        assert full.status_code == 429 and full.headers["retry-after"] and "queue" in full.json()["error"]["message"]
        audio = client.get(f"/v1/generations/{first.json()['id']}/audio?access_token=s3cret")
        assert audio.status_code == 200
    finally:
        running.stop()


def test_a_bounded_load_loses_nothing(model, processor, tmp_path):
    running = Running(Service(model, processor, tmp_path / "data", max_batch=4, max_per_client=24))
    try:

        def one(i):
            client = httpx.Client(base_url=running.url, timeout=300)
            job = client.post(
                "/v1/generations", json={"prompt": f"take {i}", "duration": 0.2 + 0.1 * (i % 4), "seed": i}
            ).json()
            done = wait_done(client, job["id"], timeout=300)
            audio = client.get(f"/v1/generations/{job['id']}/audio").content
            client.close()
            return done, audio

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(24)))
        for i, (done, audio) in enumerate(results):
            assert done["status"] == "succeeded"
            data, rate = soundfile.read(io.BytesIO(audio), dtype="float32")
            assert data.shape == (round((0.2 + 0.1 * (i % 4)) * 50) * 640,) and np.isfinite(data).all()
        assert len(running.client.get("/v1/generations?limit=100").json()["generations"]) == 24
    finally:
        running.stop()


def serve_process(folder, data, port, *more):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zhiyin.cli",
            "serve",
            "--model",
            str(folder),
            "--data-dir",
            str(data),
            "--port",
            str(port),
            *(more or ("--max-batch", "2")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )


def wait_up(url, process, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, process.stdout.read().decode()
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_kill_9_and_restart_loses_no_job(tiny_checkpoint, tmp_path):
    folder, data, port = tiny_checkpoint[0], tmp_path / "data", free_port()
    url = f"http://127.0.0.1:{port}"
    process = serve_process(folder, data, port)
    try:
        wait_up(url, process)
        finished = httpx.post(url + "/v1/generations", json={"prompt": "a", "duration": 0.4, "seed": 3}).json()
        done = wait_done(httpx.Client(base_url=url, timeout=60), finished["id"])
        before = httpx.get(f"{url}/v1/generations/{finished['id']}/audio").content
        long = httpx.post(url + "/v1/generations", json={"prompt": "b", "duration": 20, "seed": 4}).json()
        queued = [
            httpx.post(url + "/v1/generations", json={"prompt": "c", "duration": 0.6, "seed": s}).json()
            for s in (5, 6, 7)
        ]
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/v1/generations/{long['id']}").json()["progress"]["frames_done"] < 20:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        process = serve_process(folder, data, port)  # the same data folder
        wait_up(url, process)
        client = httpx.Client(base_url=url, timeout=300)
        assert done["status"] == "succeeded"
        assert client.get(f"/v1/generations/{finished['id']}/audio").content == before  # byte for byte
        for job in [long, *queued]:
            assert wait_done(client, job["id"], timeout=300)["status"] == "succeeded"
        # the interrupted job's music is what an uninterrupted run makes with its seed
        again = client.post("/v1/generations", json={"prompt": "b", "duration": 20, "seed": 4}).json()
        assert wait_done(client, again["id"], timeout=300)["status"] == "succeeded"
        first = soundfile.read(io.BytesIO(client.get(f"/v1/generations/{long['id']}/audio").content))[0]
        second = soundfile.read(io.BytesIO(client.get(f"/v1/generations/{again['id']}/audio").content))[0]
        assert np.array_equal(first, second)
        client.close()
    finally:
        process.kill()
        process.wait(30)


def test_uploads_an_audio_prompt_as_the_cli_reads_it(model, processor, tiny_checkpoint, tmp_path, shared_audio):
    running = Running(Service(model, processor, tmp_path / "data", max_upload=200_000))
    try:
        client, clip = running.client, shared_audio / "sorohanro_solo_trumpet_06.ogg"
        short = tmp_path / "short.wav"
        soundfile.write(short, soundfile.read(clip, frames=22050)[0], 22050)  # 1 s at its own rate
        fields = {"prompt": "jazz trumpet", "duration": "0.8", "seed": "9", "top_k": "30"}
        answer = client.post("/v1/generations", data=fields, files={"audio_prompt": short.read_bytes()})
        assert answer.status_code == 201, answer.text
        assert wait_done(client, answer.json()["id"])["status"] == "succeeded"
        served = soundfile.read(io.BytesIO(client.get(answer.json()["audio_url"]).content), dtype="float32")[0]
        cli_file = tmp_path / "cli.wav"
        assert (
            main(
                [
                    "generate",
                    "jazz trumpet",
                    "--model",
                    str(tiny_checkpoint[0]),
                    "--audio-prompt",
                    str(short),
                    "--duration",
                    "0.8",
                    "--seed",
                    "9",
                    "--top-k",
                    "30",
                    "--quiet",
                    "-o",
                    str(cli_file),
                ]
            )
            == 0
        )
        assert np.array_equal(served, soundfile.read(cli_file, dtype="float32")[0])
        bad = client.post("/v1/generations", data=fields, files={"audio_prompt": b"not audio at all"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "audio_prompt"
        big = client.post(
            "/v1/generations",
            data=fields,
            files={"audio_prompt": (shared_audio / "setuniman_sweet_waltz.ogg").read_bytes()},
        )
        assert big.status_code == 413 and big.json()["error"]["field"] == "audio_prompt"
        melody = client.post("/v1/generations", data=fields, files={"melody": short.read_bytes()})
        assert melody.status_code == 422 and "melody model" in melody.json()["error"]["message"]
        assert (
            client.post("/v1/generations", content=b"{oops", headers={"Content-Type": "application/json"}).json()[
                "error"
            ]["field"]
            == "body"
        )
        assert "GenerationRequest" in client.get("/openapi.json").json()["components"]["schemas"]
    finally:
        running.stop()


def test_sigterm_lets_running_jobs_finish_and_keeps_the_queue(tiny_checkpoint, tmp_path):
    folder, data, port = tiny_checkpoint[0], tmp_path / "data", free_port()
    url = f"http://127.0.0.1:{port}"
    process = serve_process(folder, data, port, "--max-batch", "1")
    try:
        wait_up(url, process)
        running = httpx.post(url + "/v1/generations", json={"prompt": "a", "duration": 3, "seed": 1}).json()
        waiting = httpx.post(url + "/v1/generations", json={"prompt": "b", "duration": 0.4, "seed": 2}).json()
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/v1/generations/{running['id']}").json()["progress"]["frames_done"] < 10:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        process = serve_process(folder, data, port, "--max-batch", "1")
        wait_up(url, process)
        client = httpx.Client(base_url=url, timeout=120)
        first = client.get(f"/v1/generations/{running['id']}").json()
        assert first["status"] == "succeeded"  # finished in its grace period, before the server stopped
        assert wait_done(client, waiting["id"])["status"] == "succeeded"  # still queued at the stop: run now
        client.close()
    finally:
        process.kill()
        process.wait(30)


def test_an_int4_server_makes_what_zhiyin_generate_int4_makes(tiny_checkpoint, tmp_path, capsys):
    """zhiyin serve --quantize int4: the same samples as zhiyin generate --quantize int4 with the same seed (two
    requests stepped together), /v1/models says how the model was loaded, and so does the file (zhiyin info)."""
    folder, port = tiny_checkpoint[0], free_port()
    url = f"http://127.0.0.1:{port}"
    process = serve_process(folder, tmp_path / "data", port, "--quantize", "int4", "--max-batch", "2")
    try:
        wait_up(url, process)
        client = httpx.Client(base_url=url, timeout=120)
        model = client.get("/v1/models").json()["models"][0]
        assert (model["dtype"], model["quantize"], model["adapter"]) == ("float32", "int4", None)
        jobs = [client.post("/v1/generations", json={"prompt": p, "duration": 1.0, "seed": 7}).json() for p in "ab"]
        assert all(wait_done(client, job["id"])["status"] == "succeeded" for job in jobs)
        served = tmp_path / "served.wav"
        served.write_bytes(client.get(f"/v1/generations/{jobs[0]['id']}/audio").content)
        client.close()
    finally:
        process.terminate()
        process.wait(60)
    argv = ["generate", "a", "--model", str(folder), "--duration", "1", "--seed", "7", "--quantize", "int4", "--quiet"]
    assert main([*argv, "-o", str(tmp_path / "cli.wav")]) == 0
    assert np.array_equal(soundfile.read(served)[0], soundfile.read(tmp_path / "cli.wav")[0])
    capsys.readouterr()
    assert main(["info", str(served)]) == 0
    settings = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("settings"))
    assert "quantize int4" in settings and "dtype float32" in settings, settings


def test_serve_refuses_other_addresses_without_a_token(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ZHIYIN_TOKEN", raising=False)
    status = main(["serve", "--model", str(tiny_checkpoint[0]), "--host", "0.0.0.0", "--data-dir", str(tmp_path)])
    assert status == 2 and "--token" in capsys.readouterr().err
    status = main(["serve", "--model", str(tiny_checkpoint[0]), "--max-batch", "0", "--data-dir", str(tmp_path)])
    assert status == 2 and "--max-batch" in capsys.readouterr().err


def test_one_client_gets_only_its_share(model, processor, tmp_path):
    running = Running(Service(model, processor, tmp_path / "data", max_batch=1, max_per_client=2))
    try:
        bodies = [{"prompt": "a", "duration": 20}, {"prompt": "b", "duration": 20}, {"prompt": "c", "duration": 1}]
        answers = [running.client.post("/v1/generations", json=body) for body in bodies]
        assert [a.status_code for a in answers] == [201, 201, 429]
        assert "per client" in answers[2].json()["error"]["message"]
    finally:
        running.stop()
