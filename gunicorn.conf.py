"""gunicorn settings for Kling Relay; every value can be overridden from the environment.

The relay's request handlers spend most of their time waiting on Kling, so threads per
worker matter more than processes: see docs/deployment.md for sizing.
"""

import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# gunicorn 27 shares one control socket per user by default; several relays (or the demo
# and a test run) on one machine would fight over it.
control_socket_disable = True
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count() * 2 + 1))
threads = int(os.environ.get("GUNICORN_THREADS", 8))
worker_class = "gthread"
# Longer than KLING_READ_TIMEOUT × KLING_MAX_ATTEMPTS would be needed for a submit that
# tries every channel at its slowest; the default covers three 60 s attempts.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 200))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", 30))
keepalive = 5
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", 10000))
max_requests_jitter = 500
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-")
errorlog = "-"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# The request line without its query string: Kling's callback URL carries a per-task
# token there, and tokens never go to logs.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(f)s" "%(a)s"'


# --- Prometheus multiprocess mode (PROMETHEUS_MULTIPROC_DIR) ---------------------------
# Each worker writes its metrics to files in that directory and GET /metrics adds up the
# files of all of them. Files of a previous run would be added too, so the master empties
# the directory when it starts; when a worker exits, its live gauges are dropped (its
# counters stay: they are part of the totals).
def on_starting(server) -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.remove(os.path.join(directory, name))


def child_exit(server, worker) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
