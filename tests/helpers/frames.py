"""Bridge frames for tests that drive a SandboxRunner directly, without a dispatcher."""

from __future__ import annotations

from executor.child.protocol import CallFrame, ReplyFrame, StartFrame


def start_frame(code: str, language: str = "python", job_id: int = 1) -> StartFrame:
    """A start frame for ``code`` in a bare job's context."""
    return {
        "type": "start",
        "language": language,
        "code": code,
        "context": {
            "job": {"id": job_id},
            "event": None,
            "work_name": "",
            "subjob_id": -1,
            "callback": {
                "id": 0,
                "pid": 0,
                "triggers": "",
                "language": language,
                "user": "",
                "count": 0,
                "maximum": 0,
            },
        },
    }


async def refuse_calls(frame: CallFrame) -> ReplyFrame:
    """Answers every qb call with an error: these runs have no supervisor."""
    return {
        "type": "reply",
        "id": frame["id"],
        "ok": False,
        "error": {"kind": "QbError", "message": "no supervisor in this test"},
    }
