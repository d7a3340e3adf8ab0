"""PNG/JPEG radiographs wrapped as DX DICOM, for the tests."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

__all__ = ["wrap_image_as_dx"]

DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def wrap_image_as_dx(
    image_path: str | Path,
    *,
    study_instance_uid: str | None = None,
    patient_id: str = "TEST0001",
    patient_name: str = "Test^Patient",
    view_position: str = "PA",
    body_part: str = "CHEST",
    accession_number: str = "",
    requested_priority: str | None = None,
    series_instance_uid: str | None = None,
) -> Dataset:
    """Wrap an 8-bit grayscale PNG/JPEG radiograph as a DX (for presentation) dataset.

    Parameters
    ----------
    image_path : str or Path
    study_instance_uid, series_instance_uid : str, optional
        New UIDs when not given.
    patient_id, patient_name, view_position, body_part, accession_number : str
    requested_priority : str, optional
        Written to the Request Attributes Sequence and Requested Procedure Priority.

    Returns
    -------
    pydicom.dataset.FileDataset-like Dataset
        With file meta, ready for ``save_as(..., enforce_file_format=True)``.
    """
    pixels = np.asarray(Image.open(image_path).convert("L"), dtype=np.uint8)
    now = datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DX_PRESENTATION
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DX_PRESENTATION
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = accession_number
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "cxr-triage-node test helper"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BodyPartExamined = body_part
    ds.ViewPosition = view_position
    ds.PatientOrientation = ["L", "F"]
    ds.ImagerPixelSpacing = [0.5, 0.5]
    ds.ImageLaterality = ""
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PresentationLUTShape = "IDENTITY"
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = 128
    ds.WindowWidth = 256
    ds.LossyImageCompression = "01"
    ds.DetectorType = "SCINTILLATOR"
    if requested_priority:
        ds.RequestedProcedurePriority = requested_priority
        item = Dataset()
        item.RequestedProcedureID = "RP1"
        item.ScheduledProcedureStepID = "SPS1"
        ds.RequestAttributesSequence = [item]
    ds.PixelData = pixels.tobytes()
    return ds
