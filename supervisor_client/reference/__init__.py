"""The embedded reference supervisor: Qube job/work state on SQLite behind the Supervisor service."""
