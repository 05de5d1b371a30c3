# Universal callback (submit-job-self): note each job as it is submitted.
job = qb.jobinfo("-id", qb.jobid())[0]
frames = len(job["agenda"])
print(
    "job %d (%s) submitted by %s: %d frames, pgrp %d"
    % (job["id"], job["name"], job["user"], frames, job["pgrp"])
)
