"""Batch jobs over HTTP: a BentoML task (`/batch/submit`, `/batch/status`, `/batch/get`) that runs
`nnship predict` on an uploaded Parquet or CSV file in a child process.

BentoML's task machinery stores the submitted request, gives it an unguessable id (uuid4), runs the
task method after answering the submit, and keeps the method's answer for `/batch/get`. This module
adds what a shared server needs around it: each job in its own folder under the jobs folder, named by
that id only (never by anything the client sends), at most `max_jobs` running per worker and
`max_queued_jobs` waiting (429 past that), a time limit per job, a state file that `/batch/status`
reports (queued, running, success with the job's summary, failure with its error line), the rejects
file at `/batch/rejects`, and deletion of everything a job left once its retention time is over.

The job runs `python -m nnship.cli predict` on the service's own verified package folder and
variant: the serving process never imports the batch layer, and a job's memory and crashes stay in
its own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from nnship.errors import NnshipError
from nnship.io import atomic_write, atomic_write_json
from nnship.service.security import REQUEST_ID, error_body, retry_after
from nnship.service.settings import Settings

log = logging.getLogger(__name__)

ROUTE = "/batch"  # BentoML adds /batch/submit, /status, /get, /retry and /cancel
SUBMIT, STATUS, REJECTS = f"{ROUTE}/submit", f"{ROUTE}/status", f"{ROUTE}/rejects"
TASK_ID = re.compile(r"[0-9a-f]{32}")  # BentoML's task ids: uuid4 hex
CANCEL = f"{ROUTE}/cancel"
STATE, INPUT, RESULT, REJECTS_FILE, ERRORS, CANCEL_MARK = (
    "state.json",
    "input",
    "result",
    "rejects.jsonl",
    "stderr.log",
    "cancel",
)
CANCEL_POLL_S = 0.2  # how often a queued or running job looks for its cancel mark
FINISHED = ("success", "failure", "cancelled")
PARQUET_MAGIC = b"PAR1"
FORMATS = ("parquet", "csv")
CHILD_ENV_DROP = ("PROMETHEUS_MULTIPROC_DIR",)


MAX_KEEP = 64  # --keep columns a job may name


class JobFailed(NnshipError):
    """A batch job that did not produce its result; the message is the job's error line."""


@dataclass(frozen=True)
class JobRequest:
    """What a submit asks of its job besides the file."""

    output_format: str = "auto"  # auto (the input's), parquet or csv
    max_reject_fraction: float = 1.0
    keep: tuple[str, ...] = ()  # input columns copied to the result unchanged


def keep_columns(text: str) -> tuple[str, ...]:
    """The comma-separated `keep` field as column names; JobFailed naming a name it cannot take."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if len(names) > MAX_KEEP:
        raise JobFailed(f"keep: {len(names)} columns named; at most {MAX_KEEP}")
    for name in names:
        if len(name) > 256 or not name.isprintable():
            raise JobFailed(f"keep: {name[:40]!r} is not a column name (printable, 256 characters)")
    return names


def jobs_root(settings: Settings) -> Path:
    """The folder holding one sub-folder per job."""
    return Path(settings.jobs_dir or Path(tempfile.gettempdir()) / "nnship-jobs")


def input_format(path: Path) -> str:
    """parquet when the file starts with Parquet's magic bytes, else csv."""
    with open(path, "rb") as f:
        return "parquet" if f.read(4) == PARQUET_MAGIC else "csv"


def error_line(text: str) -> str:
    """The last non-empty line a failed job wrote, without the program's prefix."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "the job stopped without saying why"
    return lines[-1].removeprefix("nnship: error: ")[:2000]


def align_task_store(retention_s: float) -> None:
    """Keep BentoML's task entries as long as the jobs' own folders.

    BentoML's task store holds each submitted request, the uploaded file included, and its answer,
    the result file, for 24 hours whatever the server's retention; with it set here, an upload is
    gone from the store `retention_s` after its job ended, as from the jobs folder. The store prunes
    when it records a task's answer, so an expired entry goes when the next job ends.
    """
    from _bentoml_impl.tasks.result import Sqlite3Store

    Sqlite3Store.RESULT_RETENTION = retention_s


class Jobs:
    """The batch jobs of one worker: admission, running in child processes, state and clean-up."""

    def __init__(self, settings: Settings, package_dir: Path, variant: str) -> None:
        self.settings = settings
        self.root = jobs_root(settings)
        self.package_dir = package_dir
        self.variant = variant
        self.active: set[str] = set()  # queued or running in this worker
        self.slots = asyncio.Semaphore(max(1, settings.max_jobs))
        self.root.mkdir(parents=True, exist_ok=True)
        align_task_store(settings.job_retention_s)
        self.sweep()

    # -- admission and state ---------------------------------------------------------------------
    def refusal(self) -> tuple[int, str, str, dict[str, str]] | None:
        """Why a new job cannot be taken now (status, reason, message, headers), or None."""
        s = self.settings
        if s.max_jobs == 0:
            return 404, "jobs_off", "batch jobs are switched off on this server", {}
        if len(self.active) >= s.max_jobs + s.max_queued_jobs:
            message = (
                f"{len(self.active)} batch jobs are running or queued (limit "
                f"{s.max_jobs} running + {s.max_queued_jobs} queued); retry later"
            )
            return 429, "jobs_busy", message, retry_after(30)
        return None

    def folder(self, task_id: str) -> Path | None:
        """The job's folder for a well-formed task id, else None (ids never name other paths)."""
        return self.root / task_id if TASK_ID.fullmatch(task_id) else None

    def state(self, task_id: str) -> dict[str, Any] | None:
        """The job's state file, or None for an unknown, expired or malformed id."""
        folder = self.folder(task_id)
        if folder is None:
            return None
        try:
            return json.loads((folder / STATE).read_text())
        except (OSError, ValueError):
            return None

    def _write_state(self, folder: Path, **fields: Any) -> dict[str, Any]:
        state = {**(self.state(folder.name) or {}), **fields}
        atomic_write_json(folder / STATE, state)
        return state

    def sweep(self, now: float | None = None) -> None:
        """Delete the folders of jobs finished longer ago than the retention time (and leftovers
        of jobs that never finished: a server stopped mid-job)."""
        now = time.time() if now is None else now
        keep = self.settings.job_retention_s
        with contextlib.suppress(OSError):
            for folder in self.root.iterdir():
                if not folder.is_dir() or folder.name in self.active:
                    continue
                state = self.state(folder.name) or {}
                ended = state.get("finished_at") or state.get("created_at")
                if ended is None:
                    with contextlib.suppress(OSError):
                        ended = folder.stat().st_mtime
                if ended is not None and now - ended > keep:
                    shutil.rmtree(folder, ignore_errors=True)

    # -- running -----------------------------------------------------------------------------------
    async def run(self, task_id: str, upload: Path, request: JobRequest) -> Path:
        """Queue, run and record one job; its result file, or JobFailed with the error line."""
        folder = self.folder(task_id)
        if folder is None:
            raise JobFailed("batch jobs run through POST /batch/submit")
        folder.mkdir(parents=True, exist_ok=True)
        self.active.add(task_id)
        try:
            fmt = input_format(upload)
            source = folder / f"{INPUT}.{fmt}"
            shutil.move(upload, source)
            out_fmt = fmt if request.output_format == "auto" else request.output_format
            result = folder / f"{RESULT}.{out_fmt}"
            self._write_state(folder, state="queued", created_at=time.time(), input_format=fmt)
            summary = await self._unless_cancelled(
                folder, self._queued(folder, source, result, request), result
            )
            summary.pop("output", None)  # a path on the server
            await asyncio.to_thread(_name_input, folder / REJECTS_FILE, source.name)
            await self._end(folder, result, state="success", summary=summary)
            return result
        finally:
            self.active.discard(task_id)
            self.sweep()

    async def _queued(
        self, folder: Path, source: Path, result: Path, request: JobRequest
    ) -> dict[str, Any]:
        """Wait for a slot, then run the job's process; its summary."""
        async with self.slots:
            if (folder / CANCEL_MARK).exists():  # cancelled while it waited: it never starts
                raise await self._cancelled(folder, result)
            self._write_state(folder, state="running", started_at=time.time())
            try:
                return await self._child(folder, source, result, request)
            except JobFailed as e:
                await self._end(folder, result, state="failure", error=str(e))
                raise

    async def _unless_cancelled(self, folder: Path, work, result: Path) -> dict[str, Any]:
        """`work`'s result, unless the job's cancel mark appears first: then the work is cancelled
        (a running job's process is killed and awaited), whatever output it had built is removed
        (the mark may be seen just after the process put its result in place), and the job fails as
        cancelled. The mark is a file in the job's folder, so a cancel reaches the job whichever
        worker answered it."""
        job = asyncio.ensure_future(work)
        mark = folder / CANCEL_MARK
        while not job.done():
            await asyncio.wait({job}, timeout=CANCEL_POLL_S)
            if not job.done() and mark.exists():
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError, JobFailed):
                    await job
                raise await self._cancelled(folder, result)
        return job.result()

    async def _end(self, folder: Path, result: Path, **fields: Any) -> None:
        """Record how the job ended, unless a cancel was answered first: that one wins (JobFailed
        as cancelled). No await comes between the check and the record, so a cancel this worker
        answers comes either before it (and wins) or after it (and is refused as finished)."""
        if (folder / CANCEL_MARK).exists():
            raise await self._cancelled(folder, result)
        self._write_state(folder, finished_at=time.time(), **fields)

    async def _cancelled(self, folder: Path, result: Path) -> JobFailed:
        """Record the job as cancelled and remove whatever output it built, complete or in its
        staging folder; the error its task fails with."""
        message = "cancelled by PUT /batch/cancel"
        self._write_state(folder, state="cancelled", error=message, finished_at=time.time())
        await asyncio.to_thread(_discard_output, result)
        return JobFailed(message)

    def cancel(self, task_id: str) -> tuple[int, dict[str, Any]]:
        """Ask a queued or running job to stop: (status, answer); 409 once it has finished. A job
        this answers 202 for ends cancelled, even one whose process is just finishing."""
        state = self.state(task_id)
        if state is None:
            message = "no batch job with this task_id (unknown, or its results have expired)"
            return 404, {"reason": "job_not_found", "message": message}
        if state["state"] in FINISHED:
            message = f"the job has already finished ({state['state']}); nothing to cancel"
            return 409, {"reason": "job_finished", "message": message}
        atomic_write(self.root / task_id / CANCEL_MARK, lambda tmp: tmp.write_bytes(b""))
        return 202, {"task_id": task_id, "state": "cancelling"}

    def command(self, source: Path, result: Path, request: JobRequest) -> list[str]:
        """The `nnship predict` command line of a job."""
        return [
            sys.executable,
            "-m",
            "nnship.cli",
            "predict",
            str(self.package_dir),
            "--input",
            str(source),
            "--output",
            str(result),
            "--rejects",
            str(result.parent / REJECTS_FILE),
            "--variant",
            self.variant,
            "--threads",
            str(self.settings.job_threads),
            "--workers",
            str(self.settings.job_workers),
            "--max-reject-fraction",
            repr(request.max_reject_fraction),
            # one `--keep=NAME` each: a name that starts with "-" stays a column name, never an option
            *(f"--keep={name}" for name in request.keep),
        ]

    def child_env(self) -> dict[str, str]:
        """The server's environment without its API key and metrics folder."""
        drop = {*CHILD_ENV_DROP, self.settings.api_key_env}
        return {k: v for k, v in os.environ.items() if k not in drop}

    async def _child(
        self, folder: Path, source: Path, result: Path, request: JobRequest
    ) -> dict[str, Any]:
        """Run the job's process to its end or its time limit; its summary."""
        with open(folder / ERRORS, "wb") as errors:
            proc = await asyncio.create_subprocess_exec(
                *self.command(source, result, request),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=errors,
                env=self.child_env(),
                cwd=folder,
            )
            try:
                out, _ = await asyncio.wait_for(
                    proc.communicate(), timeout=self.settings.job_timeout_s
                )
            except (TimeoutError, asyncio.CancelledError) as e:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                if isinstance(e, asyncio.CancelledError):
                    raise
                raise JobFailed(
                    f"the job ran past its {self.settings.job_timeout_s:g} s limit and was stopped"
                ) from None
        if proc.returncode != 0:
            text = (folder / ERRORS).read_text(errors="replace")
            raise JobFailed(error_line(text))
        try:
            return json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise JobFailed("the job ended without its summary line") from None


def _discard_output(result: Path) -> None:
    """A cancelled job's output removed, whether complete or still in its staging folder."""
    from nnship.batch.job import staging_dir

    result.unlink(missing_ok=True)
    shutil.rmtree(staging_dir(result), ignore_errors=True)


def _name_input(rejects: Path, name: str) -> None:
    """The rejects file with each row's `file` (a path on the server) replaced by `name`."""
    if not rejects.is_file():
        return

    def write(tmp: Path) -> None:
        with open(rejects) as src, open(tmp, "w") as dst:
            for line in src:
                dst.write(json.dumps({**json.loads(line), "file": name}) + "\n")

    atomic_write(rejects, write)


def result_response(path: Path) -> Any:
    """The result file as one response: BentoML's task store reads its answer whole, and cannot
    read a FileResponse (starlette's needs the request's method)."""
    from starlette.responses import Response

    media = "application/vnd.apache.parquet" if path.suffix == ".parquet" else "text/csv"
    disposition = f'attachment; filename="{path.name}"'
    return Response(
        path.read_bytes(), media_type=media, headers={"content-disposition": disposition}
    )


ACTIVE: list[Jobs] = []  # this worker's jobs, once the service has loaded its model


def current() -> Jobs | None:
    """This worker's jobs (None until the service is ready)."""
    return ACTIVE[0] if ACTIVE else None


class JobRoutes:
    """In front of BentoML's task routes: refuse a submit or retry past the job limits, add the
    job's state to `/batch/status`, serve `/batch/rejects`, cancel at `/batch/cancel`, and refuse
    the synchronous `/batch`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        jobs = current()
        path = scope.get("path", "")
        if scope["type"] != "http" or jobs is None or not path.startswith(ROUTE):
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method == "POST" and path == ROUTE:
            message = "batch jobs run through POST /batch/submit, then /batch/status and /batch/get"
            await _refuse(send, (404, "batch_sync", message, {}))
            return
        if method == "POST" and path in (SUBMIT, f"{ROUTE}/retry"):
            jobs.sweep()
            refusal = jobs.refusal()
            if refusal is not None:
                await _refuse(send, refusal)
                return
        if method in ("GET", "HEAD") and path == STATUS:
            await self._status(jobs, scope, receive, send)
            return
        if method in ("GET", "HEAD") and path == REJECTS:
            await self._rejects(jobs, scope, receive, send)
            return
        if method == "PUT" and path == CANCEL:  # BentoML's own cancel works on its cloud only
            status, answer = jobs.cancel(_task_id(scope))
            if status != 202:
                await _refuse(send, (status, answer["reason"], answer["message"], {}))
                return
            body = json.dumps(answer).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
            await send({"type": "http.response.start", "status": 202, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

    async def _status(self, jobs: Jobs, scope, receive, send) -> None:
        """BentoML's status answer with the job's state, summary or error added."""
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        body = b"".join(chunks)
        state = jobs.state(_task_id(scope))
        if start.get("status") == 200 and state is not None:
            body = json.dumps(status_answer(json.loads(body), state)).encode()
        headers = [
            (k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"
        ] + [(b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": start["status"], "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _rejects(self, jobs: Jobs, scope, receive, send) -> None:
        """The job's rejects as JSON Lines (empty when none), 404 for an unknown or expired id."""
        from starlette.responses import FileResponse, Response

        task_id = _task_id(scope)
        state = jobs.state(task_id)
        if state is None:
            message = "no batch job with this task_id (unknown, or its results have expired)"
            await _refuse(send, (404, "job_not_found", message, {}))
            return
        path = jobs.root / task_id / REJECTS_FILE
        if state["state"] in ("queued", "running"):
            message = f"the job is {state['state']}; its rejects are ready once it has finished"
            await _refuse(send, (409, "job_not_finished", message, {}))
            return
        if path.is_file():
            response = FileResponse(path, media_type="application/x-ndjson")
        else:
            response = Response(b"", media_type="application/x-ndjson")
        await response(scope, receive, send)


# BentoML's task statuses once its task has returned and its outcome is stored
TASK_ENDED = ("completed", "failed", "canceled")


def status_answer(answer: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """BentoML's status answer with the job's state, summary or error added, the two consistent:
    the job records its end a moment before BentoML stores the task's outcome, and until BentoML
    has, the job still reads as running (or queued), without a summary or error, so that a client
    never sees an ended job whose result or failure BentoML does not know yet."""
    current = state["state"]
    if current in FINISHED and answer.get("status") not in TASK_ENDED:
        current, state = ("running" if "started_at" in state else "queued"), {}
    answer["state"] = current
    for key in ("summary", "error"):
        if key in state:
            answer[key] = state[key]
    answer["rejects"] = (
        f"{REJECTS}?task_id={answer['task_id']}"
        if state.get("summary", {}).get("rejects")
        else None
    )
    return answer


def _task_id(scope) -> str:
    """The task_id query parameter ("" when absent or repeated)."""
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("task_id", [])
    return values[0] if len(values) == 1 else ""


async def _refuse(send, refusal: tuple[int, str, str, dict[str, str]]) -> None:
    """A JSON refusal in the guard's form; a full job queue counts as `concurrency_limited`."""
    status, reason, message, extra = refusal
    body = error_body(reason, message, REQUEST_ID.get())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        *((k.encode(), v.encode()) for k, v in extra.items()),
    ]
    if reason == "jobs_busy":
        headers.append((b"x-nnship-reject", b"concurrency_limited"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
