"""jobC waits for ribgen and render, frame by frame, in the qube callback language.

Frame N of jobC is unblocked once frame N of ribgen *and* frame N of render have
completed, in either order: the executor remembers the half of an `&&` that has
happened (its latch) until the other half does.

    cbexec farm submit scripts/examples/job-c-waits-for-a-and-b/qube.py
"""

import qb

ribgen = qb.Job()
ribgen["name"] = "ribgen"
ribgen["label"] = "ribgen"
ribgen["agenda"] = qb.genframes("1-5")

render = qb.Job()
render["name"] = "render"
render["label"] = "render"
render["agenda"] = qb.genframes("1-5")

jobC = qb.Job()
jobC["name"] = "jobC"
jobC["label"] = "jobC"
jobC["agenda"] = qb.genframes("1-5")
for work in jobC["agenda"]:
    work["status"] = "blocked"

jobC["callbacks"] = []
for work in jobC["agenda"]:
    frame = work["name"]
    jobC["callbacks"].append(
        {
            "triggers": "complete-work-ribgen-%s && complete-work-render-%s" % (frame, frame),
            "language": "qube",
            "code": "unblock-work-self",
        }
    )

qb.submit([ribgen, render, jobC])
