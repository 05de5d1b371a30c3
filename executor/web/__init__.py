"""The HTTP side port: Prometheus' /metrics, /healthz and a read-only dashboard, served in threads.

server (the threads, TLS, start and stop), app (routes), auth (token and sessions),
host_check (the Host names it answers without a token: DNS rebinding),
source (what the pages read: the executor's own API, on its event loop), the pages
(runs_pages, jobs_pages with explain, status_pages), html (escaping) and layout, and
static/ (the stylesheet and the script, served by the executor itself).
"""
