"""Image decoding: the real DICOMs and PNGs in ../shared/data, synthetic DICOM/PNG/JPEG edge cases, letterbox."""

import csv
import io
import pickle

import numpy as np
import pytest
from PIL import Image

from cxrpipe.data.images import ImageDecodeError, decode_image, letterbox, load_image
from tests.data.mimic_tree import radiograph, write_dicom


# ------------------------------------------------------------------------------------- real files
def test_monochrome1_twin_is_inverted(shared_data):
    d = shared_data / "dicom"
    m2 = decode_image(d / "siim_acr_pa_jpeg_baseline.dcm").astype(int)
    m1 = decode_image(d / "siim_acr_pa_monochrome1.dcm").astype(int)
    assert m1.shape == m2.shape == (1024, 1024)
    assert np.abs(m1 - (255 - m2)).max() <= 1
    assert m2.std() > 30  # a real radiograph, not a blank


def test_rg1_uncompressed_is_15_bit_monochrome1_and_comes_out_inverted(shared_data):
    import pydicom

    path = shared_data / "dicom" / "RG1_UNCR.dcm"
    ds = pydicom.dcmread(path)
    raw = ds.pixel_array.astype(np.float64)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == 15 and raw.max() > 2**14
    out = decode_image(path)
    assert out.shape == raw.shape and out.dtype == np.uint8
    # MONOCHROME1: low stored values are white -> the display image falls as the stored value rises
    assert np.corrcoef(out[::8, ::8].ravel(), raw[::8, ::8].ravel())[0, 1] < -0.99
    # the file's window (centre 15000, width 30000 over a 15-bit range) is what maps it, not min-max
    expected = 255 - np.clip((raw - 0.5 - (15000 - 0.5 - (30000 - 1) / 2)) / (30000 - 1) * 255, 0, 255)
    assert np.abs(out - expected).mean() < 2.0


def test_jpeg2000_decodes_close_to_its_uncompressed_twin(shared_data):
    d = shared_data / "dicom"
    unc = decode_image(d / "RG1_UNCR.dcm").astype(int)
    j2k = decode_image(d / "RG1_J2KI.dcm").astype(int)
    assert j2k.shape == unc.shape == (1955, 1841)
    diff = np.abs(j2k - unc)
    assert diff.mean() < 1.0 and np.percentile(diff, 99.9) <= 4  # lossy, but the same picture


def test_real_pngs_decode(shared_data):
    d = shared_data / "png"
    with (d / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16
    for r in rows:
        img = decode_image(d / r["path"])
        w, h = map(int, r["size"].split("x"))
        assert img.shape == (h, w) and img.dtype == np.uint8 and img.std() > 20, r["path"]
        small = load_image(d / r["path"], 64)
        assert small.shape == (64, 64) and abs(float(small.mean()) - float(img.mean())) < 6


# ------------------------------------------------------------------------------------ letterbox
@pytest.mark.parametrize("shape, rows, cols", [((100, 50), (0, 32), (8, 24)), ((30, 120), (12, 20), (0, 32))])
def test_letterbox_keeps_aspect_centres_and_pads_with_zero(shape, rows, cols):
    out = letterbox(np.full(shape, 200, np.uint8), 32)
    assert out.shape == (32, 32) and out.dtype == np.uint8
    inside = np.zeros((32, 32), bool)
    inside[rows[0] : rows[1], cols[0] : cols[1]] = True
    assert (out[inside] == 200).all() and (out[~inside] == 0).all()


def test_letterbox_upscales_small_and_rejects_bad_input():
    assert letterbox(np.full((8, 8), 7, np.uint8), 16).min() == 7
    with pytest.raises(ValueError, match="uint8"):
        letterbox(np.zeros((4, 4), np.float32), 8)


# ---------------------------------------------------------------------------------- raster files
def test_16_bit_png_full_range_and_12_bit_in_16(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "full.png")
    out = decode_image(tmp_path / "full.png")
    np.testing.assert_allclose(out, ramp / 257.0, atol=1)
    ramp12 = (ramp >> 4).astype(np.uint16)  # 12-bit data stored unscaled
    Image.fromarray(ramp12).save(tmp_path / "twelve.png")
    out12 = decode_image(tmp_path / "twelve.png")
    assert out12.max() == 255 and np.abs(out12.astype(int) - out.astype(int)).max() <= 1


def test_colour_jpeg_becomes_grey(tmp_path):
    grey = radiograph(0, 40, 40)
    Image.fromarray(np.stack([grey] * 3, -1), mode="RGB").save(tmp_path / "c.jpg", quality=95)
    out = decode_image(tmp_path / "c.jpg")
    assert out.shape == (40, 40) and np.abs(out.astype(int) - grey).mean() < 3


def _jpeg(img):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("zero.jpg", b"", "empty file"),
        ("half.jpg", "truncated", "truncated"),
        ("junk.png", b"this is not an image at all", "not an image"),
        ("junk.dcm", b"not a dicom file" * 20, "unreadable DICOM"),
    ],
)
def test_bad_files_raise_a_clear_error(tmp_path, name, content, match):
    if content == "truncated":
        data = _jpeg(radiograph(1, 64, 64))
        content = data[: len(data) // 2]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageDecodeError, match=match) as e:
        load_image(tmp_path / name, 32)
    assert e.value.path == str(tmp_path / name)


def test_missing_file_and_error_pickles(tmp_path):
    with pytest.raises(ImageDecodeError, match="cannot read file") as e:
        decode_image(tmp_path / "nope.jpg")
    back = pickle.loads(pickle.dumps(e.value))  # travels back from a worker process intact
    assert back.path == e.value.path and back.reason == e.value.reason


# -------------------------------------------------------------------------------- synthetic DICOM
def test_dicom_monochrome1_12_bit_uses_the_files_window(tmp_path):
    stored = np.linspace(0, 4095, 48 * 40).reshape(48, 40).astype(np.uint16)
    write_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1", 12, window=(1000, 1000))
    out = decode_image(tmp_path / "m1.dcm").astype(float)
    lo = 1000 - 0.5 - 999 / 2  # DICOM linear window: below lo -> min, above lo + 999 -> max
    expected = 255 - np.clip((stored - lo) / 999 * 255, 0, 255)
    assert np.abs(out - expected).max() <= 1.0
    assert out[-1, -1] == 0 and out[0, 0] == 255  # values above the window are black after inversion


def test_dicom_16_bit_rescale_without_window_uses_percentiles(tmp_path):
    stored = radiograph(3, 48, 40).astype(np.uint16) * 256
    write_dicom(tmp_path / "m2.dcm", stored, "MONOCHROME2", 16, rescale=(2.0, -100.0))
    minmax = decode_image(tmp_path / "m2.dcm", percentile=0)
    v = stored * 2.0 - 100.0
    np.testing.assert_allclose(minmax, np.rint((v - v.min()) / (v.max() - v.min()) * 255), atol=1)
    clipped = decode_image(tmp_path / "m2.dcm", percentile=5.0)
    assert (clipped == 0).sum() >= (minmax == 0).sum()  # the percentile window clips the darkest tail


def test_dicom_voi_lut_sequence_is_applied(tmp_path):
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    stored = np.linspace(0, 4095, 32 * 32).reshape(32, 32).astype(np.uint16)
    path = tmp_path / "lut.dcm"
    write_dicom(path, stored, "MONOCHROME2", 12)
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 12])  # LUTDescriptor: 4096 entries from 0, 12 bits
    item.add_new(0x00283006, "US", [4095 - i for i in range(4096)])  # LUTData: an inverting LUT
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(path, enforce_file_format=True)
    out = decode_image(path).astype(int)
    np.testing.assert_allclose(out, np.rint(255 - stored / 4095 * 255), atol=1)


def test_dicom_truncated_pixel_data(tmp_path):
    stored = np.full((64, 64), 1000, np.uint16)
    write_dicom(tmp_path / "t.dcm", stored, "MONOCHROME2", 12, window=(1000, 500))
    data = (tmp_path / "t.dcm").read_bytes()
    (tmp_path / "t.dcm").write_bytes(data[: len(data) - 4000])
    with pytest.raises(ImageDecodeError, match="cannot decode DICOM pixel data.*less than expected"):
        decode_image(tmp_path / "t.dcm")
