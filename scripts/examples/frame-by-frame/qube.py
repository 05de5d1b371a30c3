"""Frame by frame, in the qube callback language: each frame of jobB waits for the same
frame of jobA.

jobB's frames are submitted blocked, with one callback per frame: when frame N of jobA
completes, `unblock-work-self` unblocks the frame that triggered it, frame N of jobB.

    cbexec farm submit scripts/examples/frame-by-frame/qube.py
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
            "language": "qube",
            "code": "unblock-work-self",
        }
    )

qb.submit([jobA, jobB])
