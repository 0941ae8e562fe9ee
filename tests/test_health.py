"""GET /healthz: up when the database answers, 503 with a short reason when it does not."""

from django.db import OperationalError, connection


def test_healthz_is_ok_without_credentials_when_the_database_answers(client, db):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}
    assert "no-cache" in response["Cache-Control"]


def test_healthz_is_503_with_a_short_reason_when_the_database_fails(client, db):
    def database_down(execute, sql, params, many, context):
        raise OperationalError("(2003, \"Can't connect to 'db.internal' as relay:hunter2\")")

    with connection.execute_wrapper(database_down):
        response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json() == {"status": "error", "database": "unavailable (OperationalError)"}
    # The driver's message (hosts, users) stays out of a public answer.
    assert b"db.internal" not in response.content and b"hunter2" not in response.content


def test_healthz_answers_only_reads(client, db):
    assert client.post("/healthz").status_code == 405
    assert client.head("/healthz").status_code == 200


def test_healthz_is_503_when_the_database_cannot_be_reached(client, db, monkeypatch):
    def unreachable():
        raise OperationalError("(2002, \"Can't connect to server on 'db.internal'\")")

    with monkeypatch.context() as patch:  # undone before the test database is torn down
        patch.setattr(connection, "ensure_connection", unreachable)
        response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json()["status"] == "error"
    assert b"db.internal" not in response.content
