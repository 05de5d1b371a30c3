"""Job B waits for job A, in the qube callback language.

jobB is submitted blocked; its callback unblocks it when jobA completes. Both jobs go
in one qb.submit() call, so they share a process group and the trigger can name jobA
by its label.

    cbexec farm submit scripts/examples/job-b-waits-for-job-a/qube.py
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
    {"triggers": "complete-job-jobA", "language": "qube", "code": "unblock-self"},
]

qb.submit([jobA, jobB])
