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
