"""The worklist API on SQLite and PostgreSQL: authentication, roles, ordering, filters,
study detail, reading actions, feedback, monitoring, audit, metrics, readiness."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.unit.api.conftest import PASSWORD, bearer
from tests.unit.api.factories import Made, make_study
from worklist.accounts import revoke_token
from worklist.core.clock import utcnow
from worklist.tables import AuditEvent, User

# Health, metrics and authentication ---------------------------------------------------


def test_health_and_metrics_need_no_user(client: TestClient, seeded: dict[str, Made]) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    text = client.get("/metrics").text
    for name in (
        "triage_instances_received_total 12.0",
        'triage_queue_depth{state="queued"} 1.0',
        "triage_time_to_triage_seconds_count 5.0",
        "triage_delivery_failures_total 1.0",
        'triage_studies_triaged_total{decision="abnormal",status="triaged"} 2.0',
        'triage_abnormal_rate{window="24h"} 0.4',
        "triage_feedback_total 0.0",
    ):
        assert name in text, name


ANONYMOUS_DENIED = [
    ("GET", "/api/worklist"),
    ("GET", "/api/studies/1.2.3"),
    ("GET", "/api/studies/1.2.3/images/1.2.4/thumbnail"),
    ("GET", "/api/studies/1.2.3/images/1.2.4/heatmap"),
    ("POST", "/api/studies/1.2.3/claim"),
    ("POST", "/api/studies/1.2.3/release"),
    ("POST", "/api/studies/1.2.3/complete"),
    ("POST", "/api/studies/1.2.3/feedback"),
    ("GET", "/api/model-card"),
    ("GET", "/api/monitoring/agreement"),
    ("GET", "/api/monitoring/probabilities"),
    ("GET", "/api/models"),
    ("GET", "/api/monitoring/models"),
    ("GET", "/api/monitoring/time-to-read"),
    ("GET", "/api/audit"),
    ("GET", "/api/me"),
    ("GET", "/api/openapi.json"),
    ("POST", "/logout"),
]


@pytest.mark.parametrize(("method", "path"), ANONYMOUS_DENIED)
def test_api_needs_a_user(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    bad = client.request(method, path, headers=bearer("tnt_not-a-real-token"))
    assert bad.status_code == 401
    basic = client.request(method, path, headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
    assert basic.status_code == 401


def test_every_route_is_covered_by_the_auth_test(app: Any) -> None:
    public = {"/healthz", "/readyz", "/metrics", "/login", "/static"}
    pages = {"/", "/studies/{study_uid}", "/studies/{study_uid}/viewer", "/monitoring"}
    covered = {
        p.replace("1.2.3", "{study_uid}").replace("1.2.4", "{sop_uid}")
        for _m, p in ANONYMOUS_DENIED
    }
    for route in iter_route_contexts(app.routes):
        path = route.path
        if path in public or path in pages:
            continue
        assert path in covered, f"{path} is not in ANONYMOUS_DENIED"


@pytest.mark.parametrize("path", ["/", "/monitoring", "/studies/1.2.3"])
def test_pages_redirect_to_login(client: TestClient, path: str) -> None:
    response = client.get(path, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=")


def test_no_account_exists_by_default(client: TestClient, session_factory: Any) -> None:
    with session_factory() as session:
        assert session.scalar(select(func.count(User.id))) == 0
    for user, password in (("admin", "admin"), ("admin", ""), ("root", "password")):
        response = client.post(
            "/login", data={"username": user, "password": password}, follow_redirects=False
        )
        assert response.status_code == 401


def test_revoked_and_expired_tokens_fail(
    client: TestClient, users: dict[str, str], session_factory: Any
) -> None:
    from worklist.accounts import hash_token
    from worklist.tables import ApiToken

    assert client.get("/api/me", headers=bearer(users["ris"])).json()["username"] == "ris"
    with session_factory() as session:
        row = session.scalar(
            select(ApiToken).where(ApiToken.token_hash == hash_token(users["ris"]))
        )
        revoke_token(session, token_id=row.id)
        expired = session.scalar(
            select(ApiToken).where(ApiToken.token_hash == hash_token(users["rad2"]))
        )
        expired.expires_at = utcnow() - timedelta(seconds=1)
        session.commit()
    assert client.get("/api/me", headers=bearer(users["ris"])).status_code == 401
    assert client.get("/api/me", headers=bearer(users["rad2"])).status_code == 401
    assert client.get("/api/me", headers=bearer(users["rad1"])).status_code == 200


def test_login_session_csrf_and_logout(
    client: TestClient, users: dict[str, str], seeded: dict[str, Made]
) -> None:
    response = client.post(
        "/login",
        data={"username": "rad1", "password": PASSWORD, "next": "/studies/x"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/studies/x"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    me = client.get("/api/me").json()
    assert me["username"] == "rad1" and me["auth_method"] == "session" and me["csrf_token"]
    uid = seeded["abnormal"].study.study_instance_uid
    # A session's state-changing request needs the CSRF token.
    assert client.post(f"/api/studies/{uid}/claim").status_code == 403
    ok = client.post(f"/api/studies/{uid}/claim", headers={"X-CSRF-Token": me["csrf_token"]})
    assert ok.status_code == 200 and ok.json()["claimed_by"] == "rad1"
    assert client.post("/logout", headers={"X-CSRF-Token": me["csrf_token"]}).status_code == 200
    assert client.get("/api/me").status_code == 401


def test_open_redirect_is_refused(client: TestClient, users: dict[str, str]) -> None:
    response = client.post(
        "/login",
        data={"username": "rad1", "password": PASSWORD, "next": "//evil.example/"},
        follow_redirects=False,
    )
    assert response.headers["location"] == "/"


def test_failed_logins_are_rate_limited(
    client: TestClient, users: dict[str, str], session_factory: Any
) -> None:
    for _ in range(3):  # login_max_failures=3 in these settings
        bad = client.post("/login", data={"username": "rad1", "password": "wrong password!"})
        assert bad.status_code == 401
    # Now even the right password is refused without being checked.
    limited = client.post(
        "/login", data={"username": "rad1", "password": PASSWORD}, follow_redirects=False
    )
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) > 0
    # Another user from the same address is not locked out yet.
    other = client.post(
        "/login", data={"username": "rad2", "password": PASSWORD}, follow_redirects=False
    )
    assert other.status_code == 303
    with session_factory() as session:
        outcomes = session.scalars(
            select(AuditEvent.outcome).where(AuditEvent.action == "login").order_by(AuditEvent.id)
        ).all()
    assert outcomes == ["failure"] * 3 + ["rate_limited", "success"]


# Worklist --------------------------------------------------------------------------------


def _order(rows: list[dict[str, Any]], seeded: dict[str, Made]) -> list[str]:
    names = {m.study.study_instance_uid: k for k, m in seeded.items()}
    return [names[r["study_instance_uid"]] for r in rows]


def test_worklist_sorted_by_priority_then_waiting(
    client: TestClient, users: dict[str, str], seeded: dict[str, Made]
) -> None:
    rows = client.get("/api/worklist", headers=bearer(users["rad1"])).json()
    assert _order(rows, seeded) == [
        "overdue",
        "abnormal_high",
        "abnormal",
        "pending",
        "normal_old",
        "normal_new",
    ]
    first = rows[0]
    assert first["priority"] == 10 and first["priority_name"] == "OVERDUE"
    assert first["stored_priority"] == 50
    assert rows[1]["priority_label"] == "Abnormal (high)" and rows[1]["priority_colour"] == "red"
    assert rows[1]["probability"] == pytest.approx(0.96)
    assert rows[3]["priority_name"] == "PENDING" and rows[3]["probability"] is None
    assert rows[4]["waiting_seconds"] > rows[5]["waiting_seconds"]
    assert rows[2]["patient_name"] == "ABNORMAL, TEST"


def test_stat_request_beats_everything(
    client: TestClient,
    users: dict[str, str],
    seeded: dict[str, Made],
    session_factory: Any,
    settings: Any,
) -> None:
    with session_factory() as session:
        stat = make_study(
            session,
            settings.spool_dir,
            name="STATPENDING",
            priority=None,
            requested_priority="STAT",
            waited=timedelta(seconds=30),
        )
        session.commit()
    rows = client.get("/api/worklist", headers=bearer(users["rad1"])).json()
    assert rows[0]["study_instance_uid"] == stat.study.study_instance_uid
    assert rows[0]["priority_name"] == "STAT"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"state": "queued"}, {"pending"}),
        ({"priority": "ABNORMAL_HIGH"}, {"abnormal_high"}),
        ({"priority": ["20", "30"]}, {"abnormal_high", "abnormal"}),
        ({"priority": "OVERDUE"}, {"overdue"}),
        ({"modality": "CR"}, {"normal_new"}),
        ({"date_to": "2026-11-21"}, {"normal_new"}),
        ({"date_from": "2026-11-21", "priority": "NORMAL"}, {"normal_old"}),
        ({"read_state": "completed"}, set()),
    ],
)
def test_worklist_filters(
    client: TestClient,
    users: dict[str, str],
    seeded: dict[str, Made],
    params: dict[str, Any],
    expected: set[str],
) -> None:
    response = client.get("/api/worklist", params=params, headers=bearer(users["ris"]))
    assert response.status_code == 200, response.text
    assert set(_order(response.json(), seeded)) == expected


def test_worklist_rejects_unknown_priority(client: TestClient, users: dict[str, str]) -> None:
    response = client.get(
        "/api/worklist", params={"priority": "URGENTISH"}, headers=bearer(users["rad1"])
    )
    assert response.status_code == 422


def test_completed_studies_leave_the_default_list(
    client: TestClient, users: dict[str, str], seeded: dict[str, Made]
) -> None:
    uid = seeded["abnormal"].study.study_instance_uid
    assert (
        client.post(f"/api/studies/{uid}/complete", headers=bearer(users["rad1"])).json()[
            "read_state"
        ]
        == "completed"
    )
    rows = client.get("/api/worklist", headers=bearer(users["rad1"])).json()
    assert uid not in {r["study_instance_uid"] for r in rows}
    done = client.get(
        "/api/worklist", params={"read_state": "completed"}, headers=bearer(users["rad1"])
    ).json()
    assert [r["study_instance_uid"] for r in done] == [uid]
    assert done[0]["claimed_by"] == "rad1"


# Study detail ----------------------------------------------------------------------------


def test_study_detail(client: TestClient, users: dict[str, str], seeded: dict[str, Made]) -> None:
    made = seeded["abnormal_high"]
    uid = made.study.study_instance_uid
    detail = client.get(f"/api/studies/{uid}", headers=bearer(users["rad1"])).json()
    assert detail["row"]["decision"] == "abnormal"
    evaluated = [i for i in detail["images"] if i["evaluated"]]
    skipped = [i for i in detail["images"] if i["evaluated"] is False]
    assert [i["sop_instance_uid"] for i in evaluated] == [made.sop_uids[0]]
    assert evaluated[0]["probability"] == pytest.approx(0.96)
    assert skipped[0]["reason"] == "view position LL is not frontal"
    result = detail["result"]
    assert result["model"]["name"] == "cxr-triage-test"
    assert result["model"]["sha256"] == "ab" * 32
    assert result["model"]["operating_point"] == "balanced"
    assert result["delivery_state"] == "failed"
    assert result["seconds_from_arrival"] == pytest.approx(20, abs=1)
    assert detail["viewer_url"] == f"http://viewer.test/ohif/viewer?StudyInstanceUIDs={uid}"
    png = client.get(
        f"/api/studies/{uid}/images/{made.sop_uids[0]}/thumbnail", headers=bearer(users["rad1"])
    )
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        client.get(
            f"/api/studies/{uid}/images/1.2.3/thumbnail", headers=bearer(users["rad1"])
        ).status_code
        == 404
    )
    assert client.get("/api/studies/1.2.999", headers=bearer(users["rad1"])).status_code == 404


def test_pending_study_detail_has_no_result(
    client: TestClient, users: dict[str, str], seeded: dict[str, Made]
) -> None:
    uid = seeded["pending"].study.study_instance_uid
    detail = client.get(f"/api/studies/{uid}", headers=bearer(users["ris"])).json()
    assert detail["result"] is None
    assert all(i["evaluated"] is None for i in detail["images"])


# Roles and reading actions ---------------------------------------------------------------


def test_roles(
    client: TestClient, users: dict[str, str], seeded: dict[str, Made], session_factory: Any
) -> None:
    uid = seeded["abnormal"].study.study_instance_uid
    ris, rad = bearer(users["ris"]), bearer(users["rad1"])
    assert client.get("/api/worklist", headers=ris).status_code == 200
    assert client.get(f"/api/studies/{uid}", headers=ris).status_code == 200
    assert client.post(f"/api/studies/{uid}/claim", headers=ris).status_code == 403
    assert (
        client.post(
            f"/api/studies/{uid}/feedback", json={"label": "normal"}, headers=ris
        ).status_code
        == 403
    )
    assert client.get("/api/audit", headers=rad).status_code == 403
    assert client.get("/api/audit", headers=bearer(users["admin"])).status_code == 200
    with session_factory() as session:
        denied = session.scalars(
            select(AuditEvent.username).where(AuditEvent.action == "access_denied")
        ).all()
    assert sorted(denied) == ["rad1", "ris", "ris"]


def test_claim_release_complete(
    client: TestClient, users: dict[str, str], seeded: dict[str, Made]
) -> None:
    uid = seeded["abnormal"].study.study_instance_uid
    rad1, rad2, admin = bearer(users["rad1"]), bearer(users["rad2"]), bearer(users["admin"])
    assert client.post(f"/api/studies/{uid}/claim", headers=rad1).json()["claimed_by"] == "rad1"
    assert client.post(f"/api/studies/{uid}/claim", headers=rad1).status_code == 200  # idempotent
    taken = client.post(f"/api/studies/{uid}/claim", headers=rad2)
    assert taken.status_code == 409 and "rad1" in taken.json()["detail"]
    assert client.post(f"/api/studies/{uid}/release", headers=rad2).status_code == 409
    assert client.post(f"/api/studies/{uid}/complete", headers=rad2).status_code == 409
    assert client.post(f"/api/studies/{uid}/claim?force=true", headers=rad2).status_code == 403
    forced = client.post(f"/api/studies/{uid}/claim?force=true", headers=admin).json()
    assert forced["claimed_by"] == "admin"
    assert (
        client.post(f"/api/studies/{uid}/release", headers=admin).json()["read_state"] == "unread"
    )
    assert client.post(f"/api/studies/{uid}/release", headers=admin).status_code == 409
    assert client.post(f"/api/studies/{uid}/complete", headers=rad2).json() == {
        "study_instance_uid": uid,
        "read_state": "completed",
        "claimed_by": "rad2",
    }
    assert client.post(f"/api/studies/{uid}/claim", headers=rad1).status_code == 409
    rows = client.get(
        "/api/worklist", params={"read_state": ["claimed", "completed"]}, headers=rad1
    ).json()
    assert [(r["read_state"], r["claimed_by"]) for r in rows] == [("completed", "rad2")]


# Feedback and monitoring -----------------------------------------------------------------


def test_feedback(client: TestClient, users: dict[str, str], seeded: dict[str, Made]) -> None:
    uid = seeded["abnormal_high"].study.study_instance_uid
    rad1 = bearer(users["rad1"])
    saved = client.post(
        f"/api/studies/{uid}/feedback", json={"label": "abnormal", "agree": True}, headers=rad1
    )
    assert saved.status_code == 201
    assert saved.json() == {
        "study_instance_uid": uid,
        "label": "abnormal",
        "agree": True,
        "ai_decision": "abnormal",
        "revision": 1,
    }
    # agree=True with a label that contradicts the AI is refused.
    bad = client.post(
        f"/api/studies/{uid}/feedback", json={"label": "normal", "agree": True}, headers=rad1
    )
    assert bad.status_code == 422
    assert (
        client.post(
            f"/api/studies/{uid}/feedback", json={"label": "maybe"}, headers=rad1
        ).status_code
        == 422
    )
    # Sending again replaces one's feedback.
    again = client.post(f"/api/studies/{uid}/feedback", json={"label": "normal"}, headers=rad1)
    assert again.json()["agree"] is False
    detail = client.get(f"/api/studies/{uid}", headers=rad1).json()
    assert [(f["username"], f["label"], f["agree"]) for f in detail["feedback"]] == [
        ("rad1", "normal", False)
    ]


def test_monitoring_agreement_by_group(
    client: TestClient, users: dict[str, str], seeded: dict[str, Made]
) -> None:
    rad1, rad2 = bearer(users["rad1"]), bearer(users["rad2"])

    def give(key: str, label: str, who: dict[str, str] = rad1) -> None:
        uid = seeded[key].study.study_instance_uid
        r = client.post(f"/api/studies/{uid}/feedback", json={"label": label}, headers=who)
        assert r.status_code == 201, r.text

    give("abnormal_high", "abnormal")  # TP, M, 80+
    give("abnormal", "normal")  # FP, F, 60-79
    give("normal_old", "normal")  # TN, M, 18-39
    give("normal_new", "abnormal")  # FN, F, 40-59
    give("overdue", "normal", rad2)  # TN, F, 0-17
    give("pending", "abnormal")  # no AI decision: not in the rates
    report = client.get("/api/monitoring/agreement", headers=rad1).json()
    overall = report["overall"]
    assert (overall["tp"], overall["fp"], overall["tn"], overall["fn"]) == (1, 1, 2, 1)
    assert overall["agreement"]["value"] == pytest.approx(3 / 5)
    assert overall["sensitivity"]["value"] == pytest.approx(1 / 2)
    assert overall["specificity"]["value"] == pytest.approx(2 / 3)
    lo, hi = overall["agreement"]["ci95"]
    assert lo < 0.6 < hi
    assert report["undecided"] == 1
    assert report["by_sex"]["M"]["agreement"]["value"] == 1.0
    assert report["by_sex"]["F"]["n"] == 3
    assert set(report["by_age_band"]) == {"0-17", "18-39", "40-59", "60-79", "80+"}
    assert report["by_age_band"]["40-59"]["sensitivity"]["value"] == 0.0
    assert report["by_model"]["cxr-triage-test 1.0.0"]["n"] == 5
    other = client.get(
        "/api/monitoring/agreement", params={"model_version": "9.9"}, headers=rad1
    ).json()
    assert other["overall"]["n"] == 0 and other["overall"]["agreement"]["value"] is None
    metrics = client.get("/metrics").text
    assert 'triage_feedback_agreement_ratio{group="overall",value="all"} 0.6' in metrics
    assert 'triage_feedback_sensitivity_ratio{group="sex",value="M"} 1.0' in metrics


def test_monitoring_probability_distribution(
    client: TestClient, users: dict[str, str], seeded: dict[str, Made]
) -> None:
    days = client.get(
        "/api/monitoring/probabilities", params={"days": 7}, headers=bearer(users["admin"])
    ).json()
    total = sum(d["n"] for d in days)
    assert total == 5
    assert sum(sum(d["histogram"]) for d in days) == 5
    assert all(len(d["histogram"]) == 10 and d["bin_edges"][-1] == 1.0 for d in days)


# Model card, OpenAPI, audit, readiness ---------------------------------------------------


def test_model_card_and_openapi(client: TestClient, users: dict[str, str]) -> None:
    card = client.get("/api/model-card", headers=bearer(users["ris"])).json()
    assert card["name"] == "tiny-test" and card["operating_points"]["balanced"]["threshold"] == 0.5
    spec = client.get("/api/openapi.json", headers=bearer(users["ris"])).json()
    for path in (
        "/api/worklist",
        "/api/studies/{study_uid}",
        "/api/studies/{study_uid}/feedback",
        "/api/studies/{study_uid}/claim",
        "/api/model-card",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in spec["paths"], path


def test_views_and_actions_are_audited_without_patient_identifiers(
    client: TestClient, users: dict[str, str], seeded: dict[str, Made]
) -> None:
    made = seeded["abnormal"]
    uid = made.study.study_instance_uid
    rad1 = bearer(users["rad1"])
    client.get("/api/worklist", headers=rad1)
    client.get(f"/api/studies/{uid}", headers=rad1)
    client.get(f"/api/studies/{uid}/images/{made.sop_uids[0]}/thumbnail", headers=rad1)
    client.post(f"/api/studies/{uid}/claim", headers=rad1)
    client.post(f"/api/studies/{uid}/feedback", json={"label": "abnormal"}, headers=rad1)
    events = client.get(
        "/api/audit", params={"username": "rad1"}, headers=bearer(users["admin"])
    ).json()
    assert [e["action"] for e in reversed(events)] == [
        "view_worklist",
        "view_study",
        "view_image",
        "claim",
        "feedback",
    ]
    assert all(e["auth_method"] == "token" and e["client_ip"] for e in events)
    assert events[0]["study_instance_uid"] == uid
    assert events[2]["object_uid"] == made.sop_uids[0]
    text = str(events)
    assert "ABNORMAL^TEST" not in text and "ID-ABNORMAL" not in text and "ACC-ABNORMAL" not in text


def test_readyz(client: TestClient, app: Any, settings: Any) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["database"] == body["broker"] == body["model"] == "ok"
    assert body["model_name"] == "tiny-test"


def test_readyz_reports_a_missing_model_and_broker(session_factory: Any, tmp_path: Any) -> None:
    from worklist.core.settings import load_settings
    from worklist.http.app import create_app

    broken = load_settings(
        data_dir=tmp_path,
        model_path=tmp_path / "missing.onnx",
        broker_url="redis://127.0.0.1:1/0",
        session_secret="x" * 20,
    )
    with TestClient(create_app(broken, session_factory)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and body["database"] == "ok"
    assert body["model"] != "ok" and body["broker"] != "ok"


def test_old_studies_leave_the_default_window(
    client: TestClient,
    users: dict[str, str],
    seeded: dict[str, Made],
    session_factory: Any,
    settings: Any,
) -> None:
    with session_factory() as session:
        old = make_study(
            session,
            settings.spool_dir,
            name="OLD",
            priority=30,
            decision="abnormal",
            probability=0.6,
            waited=timedelta(days=20),
            study_date="20261103",
        )
        session.commit()
    uid = old.study.study_instance_uid
    rad = bearer(users["rad1"])

    def uids(**params: Any) -> set[str]:
        rows = client.get("/api/worklist", params=params, headers=rad).json()
        return {r["study_instance_uid"] for r in rows}

    assert uid not in uids()
    assert uid in uids(days=0)
    assert uid in uids(days=30)
    assert uid in uids(date_from="2026-11-01")


def test_missing_session_secret_warns_and_uses_a_random_key(
    session_factory: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from worklist.auth import session_key
    from worklist.core.settings import load_settings
    from worklist.http.app import create_app

    plain = load_settings(data_dir=tmp_path)
    assert plain.session_secret.get_secret_value() == ""
    with caplog.at_level("WARNING", logger="worklist.auth"):
        create_app(plain, session_factory)
    assert "TRIAGE_SESSION_SECRET is not set" in caplog.text
    assert session_key(plain) != session_key(plain)


def test_expired_sessions_fail_and_are_purged(
    client: TestClient, users: dict[str, str], session_factory: Any
) -> None:
    from worklist.tables import WebSession

    def sign_in() -> None:
        response = client.post(
            "/login", data={"username": "rad1", "password": PASSWORD}, follow_redirects=False
        )
        assert response.status_code == 303

    sign_in()
    assert client.get("/api/me").status_code == 200
    with session_factory() as session:
        for row in session.scalars(select(WebSession)):
            row.expires_at = utcnow() - timedelta(days=2)
        session.commit()
    assert client.get("/api/me").status_code == 401
    sign_in()  # signing in again forgets the long-expired session
    with session_factory() as session:
        assert session.scalar(select(func.count(WebSession.id))) == 1
    assert client.get("/api/me").status_code == 200
