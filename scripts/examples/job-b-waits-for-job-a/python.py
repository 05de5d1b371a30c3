"""Job B waits for job A, with a Python callback.

jobB is submitted blocked; its callback, Python code run by the executor when jobA
completes, unblocks the job it belongs to.

    cbexec farm submit scripts/examples/job-b-waits-for-job-a/python.py
"""

import qb

jobA = qb.Job()
jobA["name"] = "jobA"
jobA["label"] = "jobA"
jobA["prototype"] = "cmdrange"
jobA["agenda"] = qb.genframes("1-5")

jobB = qb.Job()
jobB["name"] = "jobB"
jobB["label"] = "jobB"
jobB["prototype"] = "cmdrange"
jobB["agenda"] = qb.genframes("1-5")
jobB["status"] = "blocked"
jobB["callbacks"] = [
    {
        "triggers": "complete-job-jobA",
        "language": "python",
        "code": "qb.unblock(qb.jobid())",
    },
]

qb.submit([jobA, jobB])
