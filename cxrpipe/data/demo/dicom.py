"""A few demo images written as DICOM, so the demo exercises the DICOM decoding path too.

The variants (:data:`VARIANTS`, cycled over the chosen studies) cover what real chest DICOMs do that a
reader must get right: MONOCHROME1 (inverted: high = dark) and MONOCHROME2; 12 to 16 stored bits; a VOI
window (WindowCenter/Width) narrower than the stored range; a modality LUT (RescaleSlope/Intercept) with
the window in rescaled units; and no window at all (the reader must window by the pixel range).
Whatever the variant, applying modality LUT -> VOI window -> MONOCHROME1 inversion gives back the drawn
image. Files are uncompressed Explicit VR Little Endian with a proper file meta header.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral"}


@dataclasses.dataclass(frozen=True)
class DicomVariant:
    photometric: str  # "MONOCHROME1" | "MONOCHROME2"
    bits_stored: int  # 12..16 (16 bits allocated)
    window: bool  # WindowCenter/Width present (the image spans 10%-90% of the range, the window exactly that)
    rescale: bool  # RescaleSlope 2 / RescaleIntercept -1000 (modality values = 2 * stored - 1000)


VARIANTS = (
    DicomVariant("MONOCHROME2", 12, window=True, rescale=False),
    DicomVariant("MONOCHROME1", 15, window=True, rescale=False),  # like the NEMA RG1 chest film
    DicomVariant("MONOCHROME2", 16, window=True, rescale=True),
    DicomVariant("MONOCHROME1", 14, window=False, rescale=False),
)
SLOPE, INTERCEPT = 2.0, -1000.0


def encode(img: np.ndarray, v: DicomVariant) -> tuple[np.ndarray, dict]:
    """[0, 1] image ``[H, W]`` -> (stored uint16 pixels, VOI/modality tags) for variant ``v``."""
    top = 2**v.bits_stored - 1
    if v.rescale:
        # modality values in [0, 2*top - 1000 - ...]: keep the stored values inside [0, top]
        m_lo, m_hi = 0.1 * (SLOPE * top + INTERCEPT), 0.9 * (SLOPE * top + INTERCEPT)
        modality = m_lo + img * (m_hi - m_lo)
        stored = (modality - INTERCEPT) / SLOPE
        tags = {"RescaleSlope": SLOPE, "RescaleIntercept": INTERCEPT, "RescaleType": "US",
                "WindowCenter": (m_lo + m_hi) / 2, "WindowWidth": m_hi - m_lo}
    elif v.window:
        lo, hi = 0.1 * top, 0.9 * top
        stored = lo + img * (hi - lo)
        tags = {"WindowCenter": (lo + hi) / 2, "WindowWidth": hi - lo}
    else:
        stored = img * top
        tags = {}
    if v.photometric == "MONOCHROME1":  # high stored value = dark: invert, and mirror the window centre
        stored = top - stored
        if "WindowCenter" in tags and not v.rescale:
            tags["WindowCenter"] = top - tags["WindowCenter"]
    pixels = np.clip(np.round(stored), 0, top).astype(np.uint16)
    return pixels, tags


def write_dicom(path: Path, img: np.ndarray, v: DicomVariant, *, seed: int, dicom_id: str, subject_id: int,
                study_id: int, view: str, study_date: str, study_time: str, description: str) -> None:
    """Write one image (float ``[H, W]`` in [0, 1]) as a DICOM file; UIDs are derived from the ids."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if v.photometric == "MONOCHROME1" and v.rescale:
        raise ValueError("MONOCHROME1 with a modality LUT is not a variant the demo writes")
    pixels, tags = encode(img, v)
    sop_uid = generate_uid(entropy_srcs=[str(seed), dicom_id])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate, ds.StudyTime = study_date, study_time
    ds.Modality = "CR"
    ds.Manufacturer = "cxrpipe demo"
    ds.StudyDescription = description
    ds.PatientName = "___"
    ds.PatientID = str(subject_id)
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[str(seed), str(study_id)])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(seed), str(study_id), view])
    ds.StudyID = str(study_id)
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.PatientOrientation = ["L", "F"] if view in ("PA", "AP") else ["A", "F"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = v.photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [0.139, 0.139]
    ds.BitsAllocated = 16
    ds.BitsStored = v.bits_stored
    ds.HighBit = v.bits_stored - 1
    ds.PixelRepresentation = 0
    for k, val in tags.items():
        setattr(ds, k, round(val, 3) if isinstance(val, float) else val)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
