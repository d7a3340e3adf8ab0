"""Unit tests for the ingest benchmark's pure parts (no receivers, no network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.ingest import (
    BenchError,
    RunResult,
    build_small,
    format_table,
    parse_stat,
    split_round_robin,
    storescu_config,
    summarize,
    tree_cpu_seconds,
)

CR = "1.2.840.10008.5.1.4.1.1.1"
EXPLICIT = "1.2.840.10008.1.2.1"
J2K = "1.2.840.10008.1.2.4.90"


def test_storescu_config_has_one_context_per_pair_with_its_own_syntax() -> None:
    text = storescu_config([(CR, EXPLICIT), (CR, J2K)])
    assert "[[TransferSyntaxes]]" in text
    assert "[[Profiles]]" in text and "[Bench]" in text
    lines = text.splitlines()
    contexts = [line for line in lines if line.startswith("PresentationContext") and "\\" in line]
    assert len(contexts) == 2
    for line in contexts:
        name = line.split("\\")[1]
        syntaxes = text.split(f"[{name}]\n")[1].splitlines()
        assert syntaxes[0].startswith("TransferSyntax1 = ")
        assert not syntaxes[1].startswith("TransferSyntax2")


def test_storescu_config_refuses_more_contexts_than_dicom_allows() -> None:
    with pytest.raises(BenchError):
        storescu_config([])
    with pytest.raises(BenchError):
        storescu_config([(f"{CR}.{i}", EXPLICIT) for i in range(129)])


def test_split_round_robin_keeps_every_file_once() -> None:
    files = [Path(f"{i}.dcm") for i in range(10)]
    parts = split_round_robin(files, 4)
    assert [len(p) for p in parts] == [3, 3, 2, 2]
    assert sorted(f for p in parts for f in p) == sorted(files)
    assert split_round_robin(files[:2], 4) == [[files[0]], [files[1]]]


def test_parse_stat_reads_times_after_a_command_with_spaces_and_parens() -> None:
    line = "42 (a (weird) name) S 7 42 42 0 -1 4194560 1 0 0 0 11 22 33 44 20 0 1 0"
    assert parse_stat(line) == (7, 11, 22, 33, 44)


def test_tree_cpu_seconds_of_this_process_grows() -> None:
    before, _ = tree_cpu_seconds(os.getpid())
    deadline = before + 0.05
    while tree_cpu_seconds(os.getpid())[0] < deadline:
        sum(range(10_000))
    assert tree_cpu_seconds(os.getpid())[0] >= deadline


def _run(receiver: str, wall: float, repeat: int = 0) -> RunResult:
    return RunResult(receiver, "small", 1, repeat, 100, 50_000_000, wall, 1.0)


def test_summarize_takes_medians_and_node_ratios() -> None:
    runs = [
        _run("node", 1.0, 0), _run("node", 2.0, 1), _run("node", 10.0, 2),
        _run("dcmtk", 0.5), _run("orthanc", 4.0),
    ]  # fmt: skip
    rows = {r.receiver: r for r in summarize(runs)}
    assert [r.receiver for r in summarize(runs)] == ["node", "dcmtk", "orthanc"]
    assert rows["node"].runs == 3
    assert rows["node"].instances_per_s == pytest.approx(50.0)
    assert rows["node"].mb_per_s == pytest.approx(25.0)
    assert rows["node"].cpu_s_per_instance == pytest.approx(0.01)
    assert rows["node"].node_ratios == pytest.approx({"dcmtk": 0.25, "orthanc": 2.0})
    assert rows["dcmtk"].node_ratios == {}
    table = format_table(list(rows.values()))
    assert "| node/dcmtk | node/orthanc |" in table
    assert "0.25x" in table and "2.00x" in table


def test_build_small_makes_half_megabyte_instances_with_fresh_uids(
    shared_data: Path, tmp_path: Path
) -> None:
    from pydicom import dcmread

    corpus = build_small(tmp_path / "small", data_dir=shared_data / "dicom", count=12)
    assert len(corpus.files) == 12
    assert corpus.contexts == [(CR, EXPLICIT)]
    first, last = (dcmread(f) for f in (corpus.files[0], corpus.files[-1]))
    assert (first.Rows, first.Columns) == (512, 512)
    assert len(first.PixelData) == 512 * 512 * 2
    assert first.SOPInstanceUID != last.SOPInstanceUID
    assert first.StudyInstanceUID != last.StudyInstanceUID  # ten to a study
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
