"""What ran: the recorder that fans each finished run out, the durable outbox that reports it
to the supervisor, the run history, Qube-style ``.cb`` callback logs, in-process metrics,
and the SQLite checkpoints they share.
"""
