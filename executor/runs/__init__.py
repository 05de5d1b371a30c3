"""What ran: the recorder, the outbox, the run history, the ``.cb`` logs and the metrics.

The recorder fans each finished run out; the durable outbox reports it to the
supervisor; the history, Qube-style callback logs and in-process metrics keep it; the
SQLite databases among them share their background checkpoints.
"""
