"""Frame by frame, with Python callbacks: each frame of jobB waits for the same frame of
jobA.

jobB's frames are submitted blocked, with one callback per frame: when frame N of jobA
completes, the callback unblocks frame N of its own job ("<jobid>:<frame>").

    cbexec farm submit scripts/examples/frame-by-frame/python.py
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
for work in jobB["agenda"]:
    work["status"] = "blocked"

jobB["callbacks"] = []
for work in jobB["agenda"]:
    jobB["callbacks"].append(
        {
            "triggers": "complete-work-jobA-%s" % work["name"],
            "language": "python",
            "code": "qb.workunblock('%%d:%s' %% qb.jobid())" % work["name"],
        }
    )

qb.submit([jobA, jobB])
