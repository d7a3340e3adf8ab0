"""A worklist for a shift, in headless Chromium at 1400x900: 40 studies on one line each,
every column visible, at least 25 rows on the screen, long text cut with an ellipsis
and whole on hover, counts per priority, "claimed by" and "opened" markers, sex and age
as people write them, one time zone, honest probabilities, plain skip reasons, and the
model's intended population with a warning for a patient outside it.

Screenshots: ``test-artifacts/shift-worklist.png`` and ``test-artifacts/shift-study.png``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select

from models.cam_output import cam_heatmap
from models.preprocess import preprocess_dataset
from models.runtime import Classifier, default_model_path
from tests.integration.web.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, _need_browser
from tests.support.http_server import serve_app
from tests.unit.api.conftest import PASSWORD
from tests.unit.api.factories import Made, make_study
from worklist.accounts import create_user
from worklist.core.settings import load_settings
from worklist.heatmaps import LABEL, heatmap_path, save_heatmap
from worklist.tables import Instance, TriageImage
from worklist.thumbnails import png_from_dataset, store_thumbnail

LONG_NAME = "VANDERBERGHE-OSTROWSKA-MONTGOMERY^ALEXANDRA MAXIMILIANA JOSE"
WIDTH, HEIGHT = 1400, 900


def _population_model(directory: Path) -> Path:
    """A tiny real ONNX model whose card states a population of children aged 1-5."""
    import onnx
    from onnx import TensorProto, helper

    from models.card import ModelCard, sidecar_path, write_card_json

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    write_card_json(
        sidecar_path(path),
        ModelCard(
            name="tiny-test",
            version="0.0.1",
            intended_use="tests only",
            intended_population={
                "description": "Children aged 1-5 years",
                "age_min_years": 1,
                "age_max_years": 5,
            },
            operating_points={"balanced": {"threshold": 0.5}},
        ),
    )
    return path


def _seed_shift(session: Any, spool: Path) -> dict[str, Made]:
    """40 studies of every priority; one with a 60-character name."""
    assert len(LONG_NAME.replace("^", ", ")) >= 60
    made: dict[str, Made] = {}
    plan = (
        [("stat", 0, "abnormal", 0.996)] * 2
        + [("high", 20, "abnormal", 0.93)] * 8
        + [("abn", 30, "abnormal", 0.64)] * 8
        + [("pending", None, None, None)] * 4
        + [("normal", 50, "normal", 0.004)] * 18
    )
    for i, (kind, priority, decision, probability) in enumerate(plan):
        made[f"{kind}{i}"] = make_study(
            session,
            spool,
            name=f"PATIENT{i:02d}",
            priority=priority,
            decision=decision,
            probability=probability,
            waited=timedelta(minutes=3 + i),
            sex="M" if i % 2 else "F",
            age=f"{20 + i:03d}Y",
            description="CHEST PA AND LATERAL, ROUTINE PREOPERATIVE WORKUP"
            if i == 3
            else "CHEST PA",
        )
    long = made["high5"].study
    long.patient_name = LONG_NAME
    long.accession_number = "ACC-2026-11-29-RADIOLOGY-0000123456789"
    made["high5"].study.patient_age = "067Y"
    made["high5"].study.patient_sex = "M"
    # A lateral image and a CT series, as the selection stores their reasons.
    images = session.scalars(
        select(TriageImage).where(
            TriageImage.result_id == made["high5"].result.id, TriageImage.evaluated.is_(False)
        )
    ).all()
    images[0].reason = "lateral_view: View Position is LL, not PA or AP"
    session.commit()
    return made


@pytest.fixture
def shift_node(tmp_path: Path, shared_data: Path) -> Iterator[dict[str, Any]]:
    """uvicorn on a free port, 40 studies, display time zone Europe/Berlin."""
    from worklist.core.db import make_engine, make_session_factory
    from worklist.core.migrate import upgrade
    from worklist.http.app import create_app

    settings = load_settings(
        data_dir=tmp_path / "data",
        session_secret="browser-test-secret-0123456789",
        model_path=_population_model(tmp_path / "model"),
        time_zone="Europe/Berlin",
    )
    upgrade(settings.effective_database_url)
    engine = make_engine(settings.effective_database_url)
    factory = make_session_factory(engine)
    with factory() as session:
        create_user(session, username="dr.house", password=PASSWORD, role="radiologist")
        session.commit()
        made = _seed_shift(session, settings.spool_dir)
    # What the worker stores for the long-name study's frontal image (abnormal): its
    # preview and heatmap, here a real radiograph's, with the shipped model's CAM of it.
    long = made["high5"]
    real = pydicom.dcmread(shared_data / "dicom" / "real" / "RG1_from_J2KI_explicit.dcm")
    with factory() as session:
        frontal = session.scalar(
            select(Instance.id).where(Instance.sop_instance_uid == long.sop_uids[0])
        )
    store_thumbnail(settings.data_dir, frontal, png_from_dataset(real))
    clf = Classifier.load(default_model_path(), ["CPUExecutionProvider"])
    _logits, cam = clf.predict_with_cam(preprocess_dataset(real, clf.card.preprocess_spec))
    save_heatmap(
        heatmap_path(settings.data_dir, long.study.study_instance_uid, 1, long.sop_uids[0]),
        cam_heatmap(cam[0]),
    )
    try:
        with serve_app(create_app(settings, factory)) as base:
            yield {"base": base, "made": made}
    finally:
        engine.dispose()


def test_shift_worklist_fits_the_screen_and_says_it_plainly(shift_node: dict[str, Any]) -> None:
    _need_browser()
    from playwright.sync_api import expect, sync_playwright

    base, made = shift_node["base"], shift_node["made"]
    long_uid = made["high5"].study.study_instance_uid
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            # A browser whose own locale would write 12-hour times in New York.
            context = browser.new_context(
                viewport={"width": WIDTH, "height": HEIGHT},
                locale="en-US",
                timezone_id="America/New_York",
            )
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(base + "/")
            page.fill("#username", "dr.house")
            page.fill("#password", PASSWORD)
            page.click("#signin")
            rows = page.locator("#rows tr.row")
            expect(rows).to_have_count(40)

            # Open one study (the long name): claim it, then come back.
            page.goto(f"{base}/studies/{long_uid}")
            page.click("button[data-action=claim]")
            expect(page.locator("#read-state")).to_contain_text("claimed by dr.house")
            page.goto(base + "/")
            expect(rows).to_have_count(40)
            long_row = page.locator(f'#rows tr[data-uid="{long_uid}"]')
            expect(long_row.locator(".mark-claimed")).to_have_text("Claimed: dr.house")
            expect(long_row.locator(".mark-opened")).to_have_attribute(
                "title", "Opened by dr.house"
            )
            expect(page.locator("#status")).to_contain_text("CET")

            page.mouse.move(300, 300)
            page.screenshot(path=str(ARTIFACTS / "shift-worklist.png"))

            # Every column is visible at 1400 px, nothing scrolls sideways.
            geometry = page.evaluate(
                """() => ({
                  scroll: document.documentElement.scrollWidth,
                  heads: [...document.querySelectorAll('#worklist thead th')].map(th => {
                    const b = th.getBoundingClientRect();
                    return {text: th.textContent, left: b.left, right: b.right,
                            width: b.width, fits: th.scrollWidth <= th.clientWidth};
                  }),
                  rowBottoms: [...document.querySelectorAll('#rows tr.row')].map(
                    r => r.getBoundingClientRect().bottom),
                  rowHeights: [...document.querySelectorAll('#rows tr.row')].map(
                    r => r.getBoundingClientRect().height),
                })"""
            )
            assert geometry["scroll"] <= WIDTH, geometry["scroll"]
            assert [h["text"] for h in geometry["heads"]] == [
                "Priority",
                "AI",
                "Waiting",
                "Patient",
                "Sex, age",
                "Study",
                "Accession",
                "Study date",
                "Mod.",
                "Reading",
            ]
            for head in geometry["heads"]:
                assert head["left"] >= 0 and head["right"] <= WIDTH, head
                assert head["width"] >= 40 and head["fits"], head
            on_screen = sum(bottom <= HEIGHT for bottom in geometry["rowBottoms"])
            assert on_screen >= 25, (on_screen, geometry["rowHeights"][:3])
            assert max(geometry["rowHeights"]) <= 30, "one line per study"

            # The long name is cut with an ellipsis and whole on hover.
            name_cell = long_row.locator("td.patient")
            cut = name_cell.evaluate(
                "td => ({overflow: getComputedStyle(td).textOverflow,"
                " clipped: td.scrollWidth > td.clientWidth})"
            )
            assert cut == {"overflow": "ellipsis", "clipped": True}
            expect(name_cell.locator("a")).to_have_attribute(
                "title", "VANDERBERGHE-OSTROWSKA-MONTGOMERY, ALEXANDRA MAXIMILIANA JOSE"
            )
            expect(long_row.locator("td.accession")).to_have_attribute(
                "title", "ACC-2026-11-29-RADIOLOGY-0000123456789"
            )

            # People's words: sex and age, honest probabilities, counts per priority.
            expect(long_row.locator("td.sexage")).to_have_text("M 67")
            stat_uid = made["stat0"].study.study_instance_uid
            stat_row = page.locator(f'#rows tr[data-uid="{stat_uid}"]')
            expect(stat_row.locator("td.prob")).to_have_text("> 99 %")
            normal_uid = made["normal22"].study.study_instance_uid
            expect(page.locator(f'#rows tr[data-uid="{normal_uid}"] td.prob')).to_have_text("< 1 %")
            counts = page.locator("#counts li").evaluate_all(
                "ls => ls.map(l => [l.dataset.priorityName, l.querySelector('.n').textContent])"
            )
            assert counts == [
                ["STAT", "2"],
                ["ABNORMAL_HIGH", "8"],
                ["ABNORMAL", "8"],
                ["PENDING", "4"],
                ["NORMAL", "18"],
            ]
            # The study page: population and warning, plain skip reason, one time zone.
            long_row.locator("td.patient a").click()
            expect(page.locator("#population")).to_contain_text("Children aged 1-5 years")
            expect(page.locator("#population-warning")).to_contain_text(
                "patient (67 years) is outside the model's intended population"
            )
            expect(page.locator("#probability")).to_have_text("93 %")
            expect(page.locator("#skipped")).to_contain_text("lateral view (LL)")
            expect(page.locator("#sex-age")).to_have_text("M 67")
            expect(page.locator("#opened-by")).to_have_text("dr.house")
            expect(page.locator("#result")).to_contain_text("CET")
            expect(page.locator("header .tz")).to_have_text("Times: Europe/Berlin")
            page.wait_for_function(
                "() => [...document.querySelectorAll('#evaluated img')]"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
            heat = page.locator("#evaluated figure.heatmap-figure")
            expect(heat).to_have_count(1)
            expect(heat).to_be_visible()
            expect(heat.locator("figcaption")).to_contain_text(LABEL)
            page.screenshot(path=str(ARTIFACTS / "shift-study.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()
