"""Production configuration: `manage.py check --deploy` is clean when configured."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def check_deploy(**env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "HTTPS"}}
    environment |= env
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_production_settings():
    result = check_deploy(
        SECRET_KEY="x" * 20 + "production-secret-key-with-enough-entropy-0123456789",
        HTTPS="on",
        ALLOWED_HOSTS="relay.example.com",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_deploy_flags_a_missing_secret_and_https():
    result = check_deploy()
    assert result.returncode != 0
    for warning in ("security.W009", "security.W008", "security.W004", "security.W012"):
        assert warning in result.stdout + result.stderr
