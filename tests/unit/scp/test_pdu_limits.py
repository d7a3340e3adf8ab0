"""The length a PDU may declare before its body is read, by type (issue 13 point 2)."""

from __future__ import annotations

from dicom_scp.pynetdicom_tweaks import (
    ASSOCIATE_PDU_MAX_BYTES,
    CONTROL_PDU_MAX_BYTES,
    P_DATA_SLACK_BYTES,
    P_DATA_UNLIMITED_MAX_BYTES,
    pdu_length_limit,
)
from worklist.ingest import patient_mismatch


def test_association_pdus_are_bounded_to_tens_of_kilobytes() -> None:
    for pdu_type in (0x01, 0x02, 0x03):
        assert pdu_length_limit(pdu_type, 1048576) == ASSOCIATE_PDU_MAX_BYTES == 131072


def test_p_data_is_bounded_by_the_advertised_maximum() -> None:
    assert pdu_length_limit(0x04, 1048576) == 1048576 + P_DATA_SLACK_BYTES
    assert pdu_length_limit(0x04, 16384) == 16384 + P_DATA_SLACK_BYTES
    assert pdu_length_limit(0x04, 0) == P_DATA_UNLIMITED_MAX_BYTES


def test_release_and_abort_are_tiny() -> None:
    for pdu_type in (0x05, 0x06, 0x07):
        assert pdu_length_limit(pdu_type, 1048576) == CONTROL_PDU_MAX_BYTES


def test_patient_mismatch_counts_an_absent_id_as_a_value() -> None:
    assert not patient_mismatch("A1", "A1")
    assert not patient_mismatch(None, None)
    assert patient_mismatch("A1", "B2")
    assert patient_mismatch("A1", None)
    assert patient_mismatch(None, "B2")
