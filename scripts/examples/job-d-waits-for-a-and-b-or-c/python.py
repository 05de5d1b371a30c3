"""jobD waits for (ribgen and render) or composite, frame by frame, with Python callbacks.

Frame N of jobD is unblocked once frame N of ribgen and frame N of render have both
completed, or as soon as frame N of composite has.

    cbexec farm submit scripts/examples/job-d-waits-for-a-and-b-or-c/python.py
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

composite = qb.Job()
composite["name"] = "composite"
composite["label"] = "composite"
composite["agenda"] = qb.genframes("1-5")

jobD = qb.Job()
jobD["name"] = "jobD"
jobD["label"] = "jobD"
jobD["agenda"] = qb.genframes("1-5")
for work in jobD["agenda"]:
    work["status"] = "blocked"

jobD["callbacks"] = []
for work in jobD["agenda"]:
    frame = work["name"]
    jobD["callbacks"].append(
        {
            "triggers": "(complete-work-ribgen-%s && complete-work-render-%s)"
            " || complete-work-composite-%s" % (frame, frame, frame),
            "language": "python",
            "code": "qb.workunblock('%%d:%s' %% qb.jobid())" % frame,
        }
    )

qb.submit([ribgen, render, composite, jobD])
