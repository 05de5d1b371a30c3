"""The callback executor: runs render-farm job callbacks in sandboxed children."""

import os
import sys

# ``cbexec serve`` (or ``python -m executor serve``): a SIGHUP (reload), SIGINT or SIGTERM
# (stop) is noted from here on, the first code of ours the process runs, before anything
# slow: until the service takes them over, their default actions would end it mid-start
# (reload_signal, stop_signal).
if sys.argv[1:2] == ["serve"]:
    from executor import reload_signal, stop_signal

    reload_signal.defer()
    stop_signal.defer()

__version__ = "0.1.0"

# The executor forks only to exec at once (zygotes, cold children's launchers): gRPC's
# fork handlers buy it nothing, and at the process's own pids limit (a thread gRPC could
# not start) its prefork handler waited for good, and with it the fork, the event loop
# and every call (``process_limit``). Read when grpc is imported, so set before any module
# of ours imports it; a value already in the environment is left alone.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
