# Universal callback (submit-job-self): note each job as it is submitted.
#
# The line goes to the run's output (`cbexec runs show`, the job's .cb log) and is
# appended to LOG, in the admin's log directory on the executor's host. Only callbacks
# whose policy has the directory's group may write there (its mode keeps the others
# out): see cbexec.toml here.
LOG = "/var/log/cbexec-callbacks/submitted.log"

job = qb.jobinfo("-id", qb.jobid())[0]
frames = len(job["agenda"])
line = "job %d (%s) submitted by %s: %d frames, pgrp %d" % (
    job["id"],
    job["name"],
    job["user"],
    frames,
    job["pgrp"],
)
print(line)
with open(LOG, "a") as log:
    log.write(line + "\n")
