"""Helpers for tests and the benchmark: a tiny ONNX model with a card, and PNG/JPEG
radiographs wrapped as DX DICOM. Not used by the serving code.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

__all__ = ["build_tiny_model", "wrap_image_as_dx"]

DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def build_tiny_model(
    path: str | Path,
    *,
    input_size: int = 64,
    slow_matmuls: int = 0,
    name: str = "tiny-test-model",
    version: str = "0.0.1",
    weight: float = 4.0,
) -> object:
    """Write a small ONNX classifier that honours the models/ contract.

    Input ``image`` ``(N, 1, S, S)``; outputs ``logits`` ``(N,)`` = ``weight * mean(image)``
    and ``embedding`` ``(N, 2)`` (mean and max). With ``slow_matmuls`` > 0 the graph
    also multiplies the image by an identity matrix that many times (whose result
    is added times zero), to make inference slow on purpose (worker-kill tests).

    Parameters
    ----------
    path : str or Path
    input_size : int
    slow_matmuls : int
    name, version : str
        Written into the embedded model card.
    weight : float

    Returns
    -------
    models.card.ModelCard
        The card as embedded (with its sha256).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from models.card import ModelCard, embed_card
    from models.preprocess import PreprocessSpec

    s = int(input_size)
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["m4"], keepdims=0, axes=[1, 2, 3]),
        helper.make_node("ReduceMax", ["image"], ["x4"], keepdims=0, axes=[1, 2, 3]),
        helper.make_node("Mul", ["m4", "w"], ["lin"]),
    ]
    inits = [numpy_helper.from_array(np.array(weight, np.float32), "w")]
    last = "lin"
    if slow_matmuls:
        inits += [
            numpy_helper.from_array((np.eye(s) * 0.999 + 1e-4).astype(np.float32), "eye"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ]
        prev = "image"
        for i in range(slow_matmuls):
            nodes.append(helper.make_node("MatMul", [prev, "eye"], [f"mm{i}"]))
            prev = f"mm{i}"
        nodes += [
            helper.make_node("ReduceMean", [prev], ["slow_m"], keepdims=0, axes=[1, 2, 3]),
            helper.make_node("Mul", ["slow_m", "zero"], ["slow_z"]),
            helper.make_node("Add", ["lin", "slow_z"], ["lin2"]),
        ]
        last = "lin2"
    nodes += [
        helper.make_node("Identity", [last], ["logits"]),
        helper.make_node("Unsqueeze", ["m4", "ax1"], ["m2"]),
        helper.make_node("Unsqueeze", ["x4", "ax1"], ["x2"]),
        helper.make_node("Concat", ["m2", "x2"], ["embedding"], axis=1),
    ]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "ax1"))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, s, s])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 2]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    card = ModelCard(
        name=name,
        version=version,
        preprocessing=PreprocessSpec(input_size=s, channels=1).to_dict(),
        calibration={"method": "temperature", "temperature": 1.0},
        operating_points={
            "balanced": {"threshold": 0.5, "sensitivity": 0.8, "specificity": 0.8},
            "high_sensitivity": {"threshold": 0.3, "sensitivity": 0.95, "specificity": 0.5},
        },
    )
    return embed_card(path, card)


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
