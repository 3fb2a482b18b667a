"""A batch job's status answer: BentoML's task status and the job's own record never disagree."""

import pytest

from nnship.service.jobs import status_answer


def bentoml(status: str) -> dict:
    return {"task_id": "a" * 32, "status": status, "created_at": "2026-01-01T00:00:00"}


SUMMARY = {"rows": 10, "predicted": 9, "rejects": 1}


@pytest.mark.parametrize(
    ("record", "shown_while_storing"),
    [
        ({"state": "success", "started_at": 1.0, "summary": SUMMARY}, "running"),
        ({"state": "failure", "started_at": 1.0, "error": "boom"}, "running"),
        ({"state": "cancelled", "started_at": 1.0, "error": "cancelled by PUT"}, "running"),
        ({"state": "cancelled", "error": "cancelled by PUT"}, "queued"),  # never started
    ],
)
def test_an_ended_job_waits_for_bentomls_outcome(record, shown_while_storing):
    """The job records its end just before BentoML stores the task's outcome: meanwhile the answer
    still reads as running (or queued) with no summary or error; once BentoML has it, both agree."""
    answer = status_answer(bentoml("in_progress"), dict(record))
    assert answer["state"] == shown_while_storing and answer["status"] == "in_progress"
    assert "summary" not in answer and "error" not in answer and answer["rejects"] is None
    ended = "completed" if record["state"] == "success" else "failed"
    answer = status_answer(bentoml(ended), dict(record))
    assert answer["state"] == record["state"] and answer["status"] == ended
    assert answer.get("summary") == record.get("summary")
    assert answer.get("error") == record.get("error")
    assert answer["rejects"] == (
        f"/batch/rejects?task_id={'a' * 32}" if record["state"] == "success" else None
    )


def test_a_job_in_progress_shows_its_own_state():
    for state in ("queued", "running"):
        answer = status_answer(bentoml("in_progress"), {"state": state, "started_at": 1.0})
        assert answer["state"] == state and answer["rejects"] is None


def test_a_cancel_seen_as_the_job_finishes_leaves_no_result(tmp_path):
    """The cancel mark can be seen just after the job's process put its result in place: the job
    still ends as cancelled, and neither its result nor its staging folder is left behind."""
    import asyncio

    from nnship.batch.job import staging_dir
    from nnship.service.jobs import CANCEL_MARK, JobFailed, Jobs
    from nnship.service.settings import Settings

    jobs = Jobs(Settings(jobs_dir=str(tmp_path / "jobs")), tmp_path, "fp32")
    folder = jobs.folder("b" * 32)
    folder.mkdir()
    result = folder / "result.parquet"
    staging = staging_dir(result)

    async def finishing() -> dict:  # the process is done; its summary is still on its way
        staging.mkdir()
        result.write_bytes(b"PAR1")
        (folder / CANCEL_MARK).write_bytes(b"")
        await asyncio.sleep(30)
        return {}

    with pytest.raises(JobFailed, match="cancelled"):
        asyncio.run(jobs._unless_cancelled(folder, finishing(), result))
    assert not result.exists() and not staging.exists()
    assert jobs.state("b" * 32)["state"] == "cancelled"


def _job(tmp_path, child):
    """A Jobs of its own whose job process is `child`; (jobs, folder, result, run coroutine)."""
    from nnship.service.jobs import JobRequest, Jobs
    from nnship.service.settings import Settings

    jobs = Jobs(Settings(jobs_dir=str(tmp_path / "jobs")), tmp_path, "fp32")
    jobs._child = child
    upload = tmp_path / "upload.csv"
    upload.write_text("a\n1\n")
    folder = jobs.folder("c" * 32)
    return jobs, folder, folder / "result.csv", jobs.run("c" * 32, upload, JobRequest())


def test_a_cancel_answered_as_the_job_ends_wins(tmp_path):
    """A cancel answered (the mark written) while the job's process returns its summary: the job
    ends cancelled, not as a success, and its result is removed; the same when its process fails."""
    import asyncio

    from nnship.service.jobs import CANCEL_MARK, JobFailed

    for fails in (False, True):

        async def child(folder, source, result, request, fails=fails):
            result.write_text("prediction\n1\n")
            (folder / CANCEL_MARK).write_bytes(b"")
            if fails:
                raise JobFailed("the job's process failed")
            return {"rows": 1, "output": str(result)}

        jobs, folder, result, run = _job(tmp_path / str(fails), child)
        with pytest.raises(JobFailed, match="cancelled"):
            asyncio.run(run)
        assert jobs.state(folder.name)["state"] == "cancelled" and not result.exists()


def test_a_job_cancelled_while_queued_never_starts(tmp_path):
    import asyncio

    from nnship.service.jobs import CANCEL_MARK, JobFailed

    started = []

    async def child(folder, source, result, request):
        started.append(folder)
        return {"rows": 1}

    jobs, folder, _, run = _job(tmp_path, child)

    async def cancelled_in_the_queue():
        async with jobs.slots:  # every slot busy: the job waits in the queue
            task = asyncio.ensure_future(run)
            await asyncio.sleep(0.05)
            (folder / CANCEL_MARK).write_bytes(b"")
        with pytest.raises(JobFailed, match="cancelled"):
            await task

    asyncio.run(cancelled_in_the_queue())
    assert started == [] and "started_at" not in jobs.state(folder.name)


def test_a_jobs_command_line_is_one_nnship_predict_takes(tmp_path):
    """The service's job settings reach the job's process as `nnship predict` flags it accepts."""
    import argparse

    from nnship.batch.cli import add_arguments
    from nnship.service.jobs import JobRequest, Jobs
    from nnship.service.settings import Settings

    settings = Settings(jobs_dir=str(tmp_path / "jobs"), job_threads=2, job_workers=3)
    jobs = Jobs(settings, tmp_path / "pkg", "fp32")
    request = JobRequest(max_reject_fraction=0.25, keep=("-id", "b"))
    cmd = jobs.command(tmp_path / "in.csv", tmp_path / "out.csv", request)
    assert cmd[1:4] == ["-m", "nnship.cli", "predict"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(cmd[4:])
    assert (args.threads, args.workers, args.variant) == (2, 3, "fp32")
    assert (args.max_reject_fraction, args.keep) == (0.25, ["-id", "b"])
    assert args.input == str(tmp_path / "in.csv") and args.output == tmp_path / "out.csv"
