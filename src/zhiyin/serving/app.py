"""`zhiyin serve`: the HTTP API and the web page over one continuous-batching engine (zhiyin/engine.py), with its
jobs in SQLite and their audio files in the data folder (store.py).

    POST   /v1/generations            a job from JSON {"prompt": str | null, "duration": s, "seed", "guidance_scale",
                                      "top_k", "top_p", "temperature", "format"} (defaults: the CLI's) -> 201 job
    GET    /v1/generations/{id}       the job: status, progress, timings, error
    GET    /v1/generations/{id}/audio while running: a WAV that grows as the music is made; when done: the file
    DELETE /v1/generations/{id}       cancel a queued or running job (a finished one: delete it and its file)
    GET    /v1/generations            newest first (?offset=&limit=)
    GET    /v1/models, /healthz, /metrics (Prometheus text), /docs (OpenAPI), / (the web page)

A job's music is `zhiyin generate`'s for the same model, prompt, settings and seed (a job without a seed gets one,
recorded), and its file is written by the same writer with the same defaults (levelled to -14 LUFS, atomically).
Jobs queued or running when the server stopped (a crash, kill -9) run again when it starts on the same data folder.
"""

from __future__ import annotations

import hmac
import io
import os
import struct
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import soundfile
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from ..engine import Engine, Job
from ..files import write_atomic
from ..processing.audio_io import WRITE_FORMATS, pcm16
from ..processing.loudness import load_meter
from ..requests import FieldError, GenerationRequest, check, new_seed, submit, write_music
from .store import JobStore

STATIC = Path(__file__).with_name("static")
MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg", "mp3": "audio/mpeg"}
UPLOADS = ("audio_prompt", "melody")


class Service:
    """The server's work: one engine, the job store, the files. Thread-safe."""

    def __init__(
        self,
        model,
        processor,
        data_dir: str | os.PathLike,
        max_batch: int = 8,
        max_duration: float = 300.0,
        max_queue: int = 64,
        max_per_client: int = 8,
        model_name: str = "model",
        max_upload: int = 32 << 20,
        loading: dict[str, str | None] | None = None,
    ):
        self.model, self.processor, self.model_name = model, processor, model_name
        # how the model was loaded (from_pretrained's dtype, quantize, device, adapter): shown at /v1/models and
        # recorded in each file's settings, so that `zhiyin info` says what made it
        self.loading = {key: value for key, value in (loading or {}).items() if value is not None}
        self.max_upload = max_upload  # bytes of an audio_prompt or melody file
        self.folder = Path(data_dir)
        (self.folder / "audio").mkdir(parents=True, exist_ok=True)
        self.store = JobStore(self.folder)
        load_meter()
        self.engine = Engine(model, max_batch)
        self.max_duration, self.max_queue, self.max_per_client = max_duration, max_queue, max_per_client
        self.live: dict[str, Job] = {}
        self.clients: dict[str, str] = {}  # live job id -> client
        self.audio_seconds = 0.0
        self._lock = threading.Lock()
        self._watchers: dict[str, threading.Thread] = {}
        self.stopping = False  # closing: jobs the engine ends now stay unfinished in the store
        self.cancelled: set[str] = set()
        self.started = time.time()
        for row in self.store.unfinished():  # what a crash interrupted: again, with the same seed
            self._start(row["id"], row["request"], row["seed"], client="restart")

    # ---- jobs ----

    def create(
        self, request: GenerationRequest, client: str, uploads: dict[str, bytes] | None = None
    ) -> dict[str, Any]:
        """A new job; `uploads`: the bytes of an audio_prompt and/or a melody file."""
        check(request, self.max_duration)
        with self._lock:
            if self.engine.queued >= self.max_queue:
                raise HTTPException(
                    429, detail={"message": "the queue is full: try again shortly"}, headers={"Retry-After": "5"}
                )
            mine = [id for id, c in self.clients.items() if c == client and not self.live[id].finished]
            if len(mine) >= self.max_per_client:
                raise HTTPException(
                    429,
                    detail={"message": f"at most {self.max_per_client} jobs per client at once"},
                    headers={"Retry-After": "5"},
                )
        seed = request.seed if request.seed is not None else new_seed()
        data = request.model_dump()
        id = uuid.uuid4().hex[:12]
        data.update(self._keep_uploads(id, uploads or {}))
        try:
            job = self._submit(data, seed)  # raises ValueError for what the library refuses
        except ValueError:
            for field in UPLOADS:  # nothing kept of a request refused
                if data.get(field):
                    (self.folder / data[field]).unlink(missing_ok=True)
            raise
        self.store.add(id, data, seed, job.frames_total)
        self._follow(id, job, client)
        return self.describe(self.store.get(id))

    def _start(self, id: str, data: dict, seed: int, client: str) -> None:
        try:
            job = self._submit(data, seed)
        except (ValueError, RuntimeError) as error:
            self.store.update(id, status="failed", error=str(error), finished_at=time.time())
            return
        self.store.update(id, status="queued", frames_done=0)
        self._follow(id, job, client)

    def _keep_uploads(self, id: str, uploads: dict[str, bytes]) -> dict[str, str]:
        """Checked uploads, kept in the data folder under names the server chooses (a restart needs them)."""
        kept = {}
        for field, content in uploads.items():
            if len(content) > self.max_upload:
                raise HTTPException(
                    413,
                    detail={
                        "field": field,
                        "message": f"{field} is {len(content)} bytes, more than this server takes ({self.max_upload})",
                    },
                )
            try:
                soundfile.info(io.BytesIO(content))
            except Exception:
                raise FieldError(field, "is not an audio file soundfile reads (WAV, FLAC, OGG, MP3)") from None
            path = self.folder / "uploads" / f"{id}-{field}"
            path.parent.mkdir(exist_ok=True)
            write_atomic(path, lambda temporary: Path(temporary).write_bytes(content))
            kept[field] = str(path.relative_to(self.folder))
        return kept

    def _submit(self, data: dict, seed: int) -> Job:
        uploads = {field: self.folder / data[field] if data.get(field) else None for field in UPLOADS}
        return submit(self.engine, self.processor, data, seed, **uploads)

    def _follow(self, id: str, job: Job, client: str) -> None:
        with self._lock:
            self.live[id], self.clients[id] = job, client
        watcher = threading.Thread(target=self._watch, args=(id, job), name=f"zhiyin-job-{id}", daemon=True)
        self._watchers[id] = watcher
        watcher.start()

    def _watch(self, id: str, job: Job) -> None:
        """Keep the store up to date with the job, and write its file when it is done."""
        try:
            last = -1
            while not job.finished:
                if job.status == "running" and last < 0:
                    self.store.update(id, status="running", started_at=job.started_at)
                if job.frames_done != last and job.status == "running":
                    last = job.frames_done
                    self.store.update(id, frames_done=last)
                time.sleep(0.2)
            if job.status == "succeeded":
                self._write(id, job)
            elif self.stopping and id not in self.cancelled:
                return  # ended by the shutdown: it stays queued or running, to run again at the next start
            else:
                self.store.update(
                    id, status=job.status, error=job.error, finished_at=job.finished_at, frames_done=job.frames_done
                )
        except Exception as error:  # never lose a job silently
            if self.stopping:
                return  # the shutdown took the engine away: it stays unfinished, to run again at the next start
            self.store.update(id, status="failed", error=f"{type(error).__name__}: {error}", finished_at=time.time())
        finally:
            with self._lock:
                self.live.pop(id, None), self.clients.pop(id, None)
                self._watchers.pop(id, None)

    def _write(self, id: str, job: Job) -> None:
        row = self.store.get(id)
        data, rate = row["request"], self.model.config.audio_encoder.sampling_rate
        audio = job.audio()[0].cpu().numpy()
        name = f"audio/{id}.{data['format']}"
        settings = {**data, **self.loading}
        metadata = dict(prompt=data["prompt"], model=self.model_name, seed=row["seed"], settings=settings)
        write_music(self.folder / name, audio, rate, data["format"], metadata)
        self.audio_seconds += audio.shape[-1] / rate
        self.store.update(id, status="succeeded", file=name, frames_done=job.frames_done, finished_at=job.finished_at)

    def cancel(self, id: str) -> dict[str, Any]:
        """Cancel a queued or running job; a finished one is deleted, with its file."""
        row = self.existing(id)
        job = self.live.get(id)
        if job is not None and not job.finished:
            self.cancelled.add(id)
            job.cancel()
            self.store.update(id, status="cancelled", finished_at=time.time())
            return self.describe(self.store.get(id))
        if row["file"]:
            (self.folder / row["file"]).unlink(missing_ok=True)
        self.store.delete(id)
        return {**self.describe(row), "status": "deleted"}

    def existing(self, id: str) -> dict[str, Any]:
        row = self.store.get(id)
        if row is None:
            raise HTTPException(404, detail={"message": f"no generation '{id}'"})
        return row

    def describe(self, row: dict[str, Any]) -> dict[str, Any]:
        job = self.live.get(row["id"])
        status = row["status"]
        if job is not None and not job.finished:
            status = "cancelled" if row["id"] in self.cancelled else job.status
        done = job.frames_done if job is not None else row["frames_done"]
        queue_position = self.engine.queue_position(job) if job is not None and status == "queued" else None
        return dict(
            id=row["id"],
            status=status,
            prompt=row["request"]["prompt"],
            request=row["request"],
            seed=row["seed"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            progress=dict(frames_done=done, frames_total=row["frames_total"]),
            queue_position=queue_position,
            error=row["error"],
            audio_url=f"/v1/generations/{row['id']}/audio",
        )

    def metrics(self) -> str:
        counts = self.store.counts()
        lines = [
            "# TYPE zhiyin_queue_length gauge",
            f"zhiyin_queue_length {self.engine.queued}",
            "# TYPE zhiyin_active_rows gauge",
            f"zhiyin_active_rows {self.engine.active * Engine.ROWS_PER_SLOT}",
            "# TYPE zhiyin_steps_total counter",
            f"zhiyin_steps_total {self.engine.steps}",
            "# TYPE zhiyin_steps_per_second gauge",
            f"zhiyin_steps_per_second {self.engine.steps / max(1e-9, time.time() - self.started):.3f}",
            "# TYPE zhiyin_audio_seconds_total counter",
            f"zhiyin_audio_seconds_total {self.audio_seconds:.3f}",
            "# TYPE zhiyin_jobs gauge",
        ]
        lines += [
            f'zhiyin_jobs{{status="{status}"}} {counts.get(status, 0)}'
            for status in ("queued", "running", "succeeded", "failed", "cancelled")
        ]
        return "\n".join(lines) + "\n"

    def drain(self, grace: float) -> None:
        """Shut down: running jobs get up to `grace` seconds to finish (and be written); what is left, running or
        queued, stays so in the store and runs again at the next start."""
        self.engine.stop_admitting()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(job.status == "running" for job in list(self.live.values())):
            time.sleep(0.1)
        self.close()

    def close(self) -> None:
        self.stopping = True
        for id, job in list(self.live.items()):  # finished jobs still being written need the engine to decode
            watcher = self._watchers.get(id)
            if job.status == "succeeded" and watcher is not None:
                watcher.join(timeout=60)
        self.engine.close()
        for thread in list(self._watchers.values()):
            thread.join(timeout=10)
        self.store.close()


def _error(status: int, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, **({"field": field} if field else {})}}
    return JSONResponse(body, status_code=status, headers=headers)


def wav_header(rate: int, channels: int) -> bytes:
    """A 16-bit PCM WAV header whose sizes say 'as long as it goes': for audio streamed while it is made."""
    unknown = 0xFFFFFFFF
    return (
        b"RIFF"
        + struct.pack("<I", unknown)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * 2, channels * 2, 16)
        + b"data"
        + struct.pack("<I", unknown)
    )


def create_app(service: Service, token: str | None = None) -> FastAPI:
    app = FastAPI(
        title="zhiyin",
        description="MusicGen as a service: many requests at once, continuously batched",
        version=__import__("zhiyin").__version__,
    )

    def authorized(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if "access_token" in request.query_params:  # an <audio> element cannot send a header
            given = "Bearer " + request.query_params["access_token"]
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(
                401,
                detail={"message": "missing or wrong token: send Authorization: Bearer <token>"},
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"] if part not in ("body",)) or None
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = (
                "is not a field of a generation request (fields: " + ", ".join(GenerationRequest.model_fields) + ")"
            )
        elif first["type"] == "missing":
            message = "is required" + (" (null for music from nothing)" if field == "prompt" else "")
        return _error(422, f"{field} {message}" if field else message, field)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        detail = error.detail if isinstance(error.detail, dict) else {"message": str(error.detail)}
        return _error(error.status_code, detail["message"], detail.get("field"), error.headers)

    @app.exception_handler(FieldError)
    async def field_error(request: Request, error: FieldError) -> JSONResponse:
        return _error(422, str(error), error.field)

    @app.exception_handler(ValueError)
    async def value_error(request: Request, error: ValueError) -> JSONResponse:  # the library's checks
        field = str(error).split(" ", 1)[0]
        return _error(422, str(error), field if field in GenerationRequest.model_fields else None)

    guard = [Depends(authorized)]

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "queued": service.engine.queued, "active": service.engine.active}

    @app.post(
        "/v1/generations",
        status_code=201,
        dependencies=guard,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/GenerationRequest"}},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "description": "the same fields, plus files "
                            "audio_prompt (to continue) and/or melody (melody models)",
                        }
                    },
                },
            }
        },
    )
    async def create(request: Request) -> dict:
        """A job from JSON, or from multipart/form-data with the same fields and the files audio_prompt, melody."""
        uploads = {}
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            fields = {}
            for name, value in form.multi_items():
                if name in UPLOADS and hasattr(value, "read"):
                    uploads[name] = await value.read()
                else:
                    fields[name] = None if name == "prompt" and value == "null" else value
            fields = {k: v for k, v in fields.items() if v != "" or k == "prompt"}
        else:
            try:
                fields = await request.json()
            except ValueError:
                raise FieldError("body", "is not JSON: send a JSON object (or multipart/form-data)") from None
        if not isinstance(fields, dict):
            raise FieldError("body", "must be a JSON object of the request's fields")
        try:
            body = GenerationRequest.model_validate(fields)
        except ValidationError as error:
            raise RequestValidationError(error.errors()) from None
        client = request.client.host if request.client else "unknown"
        return await run_in_threadpool(service.create, body, client, uploads)

    @app.get("/v1/generations", dependencies=guard)
    def listing(offset: int = 0, limit: int = 20) -> dict:
        if offset < 0 or not 1 <= limit <= 100:
            raise FieldError("limit" if offset >= 0 else "offset", "must be offset >= 0 and 1 <= limit <= 100")
        rows = service.store.list(offset, limit)
        return {"generations": [service.describe(row) for row in rows], "offset": offset, "limit": limit}

    @app.get("/v1/generations/{id}", dependencies=guard)
    def get(id: str) -> dict:
        return service.describe(service.existing(id))

    @app.delete("/v1/generations/{id}", dependencies=guard)
    def cancel(id: str) -> dict:
        return service.cancel(id)

    @app.get("/v1/generations/{id}/audio", dependencies=guard)
    def audio(id: str):
        row = service.existing(id)
        if row["status"] == "succeeded" and row["file"]:
            path = service.folder / row["file"]
            return FileResponse(path, media_type=MEDIA_TYPES[row["request"]["format"]], filename=path.name)
        job, status = service.live.get(id), service.describe(row)["status"]
        if job is None or status in ("failed", "cancelled"):
            raise HTTPException(409, detail={"message": f"generation '{id}' is {status}: it has no audio"})
        rate = service.model.config.audio_encoder.sampling_rate
        channels = service.model.config.decoder.audio_channels

        def chunks():
            yield wav_header(rate, channels)
            try:
                for chunk in job.audio_chunks():
                    yield pcm16(chunk[0].cpu())  # as the finished file's writer converts samples
            except RuntimeError:  # failed or cancelled while streaming: the audio ends there
                return

        return StreamingResponse(chunks(), media_type="audio/wav")

    @app.get("/v1/models", dependencies=guard)
    def models() -> dict:
        config = service.model.config
        return {
            "models": [
                {
                    "id": service.model_name,
                    "dtype": str(service.model.dtype).removeprefix("torch."),
                    "quantize": service.loading.get("quantize"),
                    "adapter": service.loading.get("adapter"),
                    "sampling_rate": config.audio_encoder.sampling_rate,
                    "channels": config.decoder.audio_channels,
                    "melody": hasattr(config, "chroma_length"),
                    "max_duration": service.max_duration,
                    "formats": sorted(MEDIA_TYPES),
                }
            ]
        }

    @app.get("/metrics", response_class=PlainTextResponse, dependencies=guard)
    def metrics() -> str:
        return service.metrics()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (STATIC / "index.html").read_text(encoding="utf-8")

    def openapi() -> dict:  # the request's schema, which the endpoint reads itself (JSON or multipart)
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {})["GenerationRequest"] = (
                GenerationRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    assert set(MEDIA_TYPES) <= set(WRITE_FORMATS)
    return app
