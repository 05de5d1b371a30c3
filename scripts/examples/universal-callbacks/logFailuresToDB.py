# Universal callback (failed-job-self): record each failed job in an SQLite database.
#
# DB_PATH is the site's failure log on the executor's host, in the admin's log directory
# that the example's policy binds into the sandbox (cbexec.toml here); edit it for your
# site. The line it records is printed first, so it is in the run's output (`cbexec runs
# show`, the job's .cb log) even when the database cannot be written.
import contextlib
import os
import sqlite3
import time

DB_PATH = "/var/log/cbexec-callbacks/failures.db"

job = qb.jobinfo("-id", qb.jobid())[0]
failed = [work["name"] for work in job["agenda"] if work["status"] == "failed"]
print(
    "job %d (%s) of %s failed: frames %s"
    % (job["id"], job["name"], job["user"], ",".join(failed) or "-")
)

# Made group-writable first: SQLite makes a new database 0644 less the umask (0640 under
# the policy's 007), and the next failed job's run, as another sandbox uid of the group,
# could not write it. Where this fails, sqlite3 says why below.
with contextlib.suppress(OSError):
    os.close(os.open(DB_PATH, os.O_CREAT | os.O_WRONLY, 0o660))
try:
    with sqlite3.connect(DB_PATH) as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS failures"
            " (job_id INTEGER, name TEXT, user TEXT, frames TEXT, time REAL)"
        )
        db.execute(
            "INSERT INTO failures VALUES (?, ?, ?, ?, ?)",
            (job["id"], job["name"], job["user"], ",".join(failed), time.time()),
        )
except sqlite3.Error as err:
    raise SystemExit("cannot record job %d in %s: %s" % (job["id"], DB_PATH, err))
