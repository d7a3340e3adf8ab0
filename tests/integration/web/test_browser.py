"""The web page in headless Chromium (Debian's chromium, driven by Playwright): sign in,
see the worklist in priority order, watch it update live, open a study, give feedback.

Screenshots are saved under ``test-artifacts/`` (git-ignored).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import REPO_ROOT
from tests.support.http_server import serve_app
from tests.unit.api.conftest import PASSWORD, tiny_model
from tests.unit.api.factories import Made, make_study, seed_worklist
from worklist.accounts import create_user
from worklist.core.settings import load_settings
from worklist.tables import Feedback

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def _need_browser() -> None:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(CHROMIUM)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package")
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"missing in CI: {', '.join(missing)}")
        pytest.skip(f"missing: {', '.join(missing)}")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A running HTTP server (uvicorn, free port) on a seeded SQLite database."""
    from worklist.core.db import make_engine, make_session_factory
    from worklist.core.migrate import upgrade
    from worklist.http.app import create_app

    settings = load_settings(
        data_dir=tmp_path / "data",
        session_secret="browser-test-secret-0123456789",
        viewer_url_template="http://viewer.test/ohif/viewer?StudyInstanceUIDs={study_uid}",
        model_path=tiny_model(tmp_path / "model"),
    )
    url = settings.effective_database_url
    upgrade(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    with factory() as session:
        create_user(session, username="dr.house", password=PASSWORD, role="radiologist")
        session.commit()
        made = seed_worklist(session, settings.spool_dir)
    try:
        with serve_app(create_app(settings, factory)) as base:
            yield {"base": base, "made": made, "factory": factory, "settings": settings}
    finally:
        engine.dispose()


def test_sign_in_worklist_study_feedback(node: dict[str, Any]) -> None:
    _need_browser()
    from playwright.sync_api import expect, sync_playwright

    base, made = node["base"], node["made"]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            # Unauthenticated: sent to the sign-in page; a wrong password is refused.
            page.goto(base + "/")
            expect(page.locator("h1")).to_have_text("Sign in")
            page.fill("#username", "dr.house")
            page.fill("#password", "not the password")
            page.click("#signin")
            expect(page.locator(".error")).to_contain_text("Wrong user name or password")
            page.fill("#username", "dr.house")
            page.fill("#password", PASSWORD)
            page.click("#signin")

            # The worklist, in priority order, with colour + text flags.
            rows = page.locator("#rows tr.row")
            expect(rows).to_have_count(6)
            uids = rows.evaluate_all("rs => rs.map(r => r.dataset.uid)")
            order = {m.study.study_instance_uid: k for k, m in made.items()}
            assert [order[u] for u in uids] == [
                "overdue",
                "abnormal_high",
                "abnormal",
                "pending",
                "normal_old",
                "normal_new",
            ]
            priorities = rows.evaluate_all("rs => rs.map(r => Number(r.dataset.priority))")
            assert priorities == sorted(priorities)
            first_flag = rows.nth(1).locator(".flag")
            expect(first_flag).to_have_text("Abnormal (high)")
            expect(first_flag).to_have_class("flag flag-red")
            expect(rows.nth(1)).to_contain_text("96 %")
            expect(rows.nth(1)).to_contain_text("ABNHIGH, TEST")

            # Live: a new STAT study shows up at the top without a reload.
            with node["factory"]() as session:
                stat = make_study(
                    session,
                    node["settings"].spool_dir,
                    name="LIVESTAT",
                    priority=0,
                    decision="abnormal",
                    probability=0.99,
                    waited=timedelta(seconds=5),
                )
                session.commit()
            expect(rows).to_have_count(7, timeout=15000)
            expect(rows.first).to_have_attribute("data-uid", stat.study.study_instance_uid)
            expect(rows.first.locator(".flag")).to_have_text("STAT")
            page.screenshot(path=str(ARTIFACTS / "worklist.png"), full_page=True)

            # The study page: thumbnail with score, skipped reason, viewer link.
            target: Made = made["abnormal_high"]
            rows.nth(2).locator("a").click()
            expect(page.locator("#flag")).to_have_text("Abnormal (high)")
            thumb = page.locator("#evaluated img")
            expect(thumb).to_have_count(1)
            page.wait_for_function(
                "() => { const i = document.querySelector('#evaluated img');"
                " return i && i.complete && i.naturalWidth > 0; }"
            )
            expect(page.locator("#evaluated figcaption")).to_contain_text("96 %")
            expect(page.locator("#skipped")).to_contain_text("view position LL is not frontal")
            expect(page.locator("#delivery")).to_contain_text("failed")
            expect(page.locator("#open-viewer")).to_have_attribute(
                "href", f"/studies/{target.study.study_instance_uid}/viewer"
            )

            # Claim, then feedback: disagree -> the label flips to Normal.
            expect(page.locator("button[data-action=release]")).to_be_hidden()
            page.click("button[data-action=claim]")
            expect(page.locator("#read-state")).to_have_text("claimed by dr.house")
            # only what makes sense now: mine, so Release and Mark read, no Claim
            expect(page.locator("button[data-action=claim]")).to_be_hidden()
            expect(page.locator("button[data-action=release]")).to_be_visible()
            expect(page.locator("button[data-action=complete]")).to_be_visible()
            page.check("input[name=agree][value=false]")
            assert page.is_checked("input[name=label][value=normal]")
            page.fill("input[name=comment]", "old scarring only")
            page.click("#send-feedback")
            expect(page.locator("#feedback-status")).to_have_text(
                "Saved: normal (disagrees with AI)"
            )
            page.screenshot(path=str(ARTIFACTS / "study.png"), full_page=True)

            # Monitoring: the feedback counts at once (one false positive).
            page.click("text=Monitoring")
            overall = page.locator("#agreement tbody tr").first
            expect(overall).to_contain_text("Overall")
            expect(overall.locator("td").nth(2)).to_have_text("1")
            expect(page.locator("#drift tbody tr")).not_to_have_count(0)
            page.screenshot(path=str(ARTIFACTS / "monitoring.png"), full_page=True)

            # Sign out: the worklist is gone until signing in again.
            page.click("#logout")
            expect(page.locator("h1")).to_have_text("Sign in")
            page.goto(base + "/")
            expect(page.locator("h1")).to_have_text("Sign in")
            assert errors == []
        finally:
            browser.close()

    with node["factory"]() as session:
        rows_fb = session.scalars(select(Feedback)).all()
    assert [(f.label, f.agree, f.ai_decision, f.comment) for f in rows_fb] == [
        ("normal", False, "abnormal", "old scarring only")
    ]
    assert (ARTIFACTS / "worklist.png").stat().st_size > 10_000
    assert (ARTIFACTS / "study.png").stat().st_size > 10_000
    assert shutil.which("chromium") or Path(CHROMIUM).exists()
