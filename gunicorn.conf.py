"""gunicorn settings for Kling Relay; every value can be overridden from the environment.

The relay's request handlers spend most of their time waiting on Kling, so threads per
worker matter more than processes: see docs/deployment.md for sizing.
"""

import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
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
