"""Nothing leaked (issue 17, items 2 and 7): patient text stays in the two outputs that must hold it, and every
output file is readable as the umask says.

The run (tests/pipeline.py, the `pipeline` fixture) is every stage of dvc.yaml on a tree whose reports carry a
canary string in every kept section and which is NOT the embedded demo (it stands for MIMIC-CXR).
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import stat
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

import pytest

from tests.pipeline import CANARY, UMASK, invoke, recording, run_pipeline

# where report text must be: the prepared manifest and the text cache (derived data under the source's licence)
ALLOWED = ("data/prepared/studies.csv", "data/cache/text.h5", "data/cache/text.h5.parts/")
SOURCE = "data/demo/"  # the input tree itself


def png_text(data: bytes) -> Iterator[bytes]:
    """The text chunks of a PNG (tEXt as is, zTXt and iTXt inflated)."""
    pos = 8
    while pos + 8 <= len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"tEXt":
            yield body
        elif kind == b"zTXt":
            yield zlib.decompress(body[body.index(b"\0") + 2:])
        elif kind == b"iTXt":
            key, rest = body.split(b"\0", 1)
            flag, rest = rest[0], rest[2:]
            text = rest.split(b"\0", 2)[2]
            yield key + b" " + (zlib.decompress(text) if flag else text)
        pos += 12 + n


def contents(path: Path) -> Iterator[bytes]:
    """The bytes of a file and of what it wraps: zip / npz members, gzip, PNG text chunks."""
    data = path.read_bytes()
    yield data
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            yield from (z.read(n) for n in z.namelist())
    if data[:2] == b"\x1f\x8b":
        yield gzip.decompress(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        yield from png_text(data)


def holds_canary(blob: bytes) -> bool:
    """ASCII/UTF-8, or as numpy stores str arrays (UTF-32) and as UTF-16."""
    return any(CANARY.encode(enc) in blob for enc in ("utf-8", "utf-16-le", "utf-32-le"))


def leaks(root: Path) -> list[str]:
    out = []
    for path in sorted(p for p in (root / "data").rglob("*") if p.is_file()):
        rel = str(path.relative_to(root))
        if rel.startswith(SOURCE) or rel.startswith(ALLOWED):
            continue
        if any(holds_canary(b) for b in contents(path)):
            out.append(rel)
    return out


def test_the_canary_reached_the_manifest(pipeline):
    """The plant worked: every report carries it and every study's cleaned text in the manifest holds it."""
    import csv

    assert pipeline.n_planted >= 80
    with (pipeline.root / "data/prepared/studies.csv").open() as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    assert len(texts) >= 80 and all(CANARY in t for t in texts)
    assert (pipeline.root / "data/prepared/prepare_report.json").read_text().count('"demo": false') == 1


def test_no_output_but_the_manifest_and_the_text_cache_holds_report_text(pipeline):
    """Every file of every stage (PNG text chunks, npz members, JSON, CSV, HDF5, markdown), every string drawn
    into a figure, every line logged and every stage's CLI output: no canary."""
    assert set(pipeline.stages) >= {"attention_maps", "compare", "zeroshot@multimodal", "retrieval@multimodal",
                                    "transfer_compare", "label_efficiency_summary"}
    assert leaks(pipeline.root) == []
    assert len(pipeline.drawn) > 100 and not [t for t in pipeline.drawn if CANARY in t]
    assert pipeline.logs and not [line for line in pipeline.logs if CANARY in line]
    assert not [s for s, out in pipeline.outputs.items() if CANARY in out]
    index = json.loads((pipeline.root / "data/reports/attention.json").read_text())
    assert index["report_shown"] is False and len(index["panels"]) == 2


def test_opting_in_shows_the_report_with_a_warning(pipeline_copy, pipeline):
    """The positive control: with attention.show_report the same stage draws the report text (so the scan
    above would see it) and warns; the embedded demo's synthetic reports are shown without opting in."""
    import yaml

    params = yaml.safe_load(Path("params.yaml").read_text())
    params["attention"]["show_report"] = True
    Path("params.yaml").write_text(yaml.safe_dump(params))
    drawn, logs = [], []
    with recording(drawn, logs):
        res = invoke(pipeline.commands["attention_maps"])
    assert res.exit_code == 0, res.output
    assert any(CANARY in t for t in drawn)
    assert [line for line in logs if "show_report is true" in line and "do not share" in line]
    assert json.loads(Path("data/reports/attention.json").read_text())["report_shown"] is True
    assert leaks(pipeline_copy) == []  # drawn into pixels, not into file bytes: hence the drawn-text check
    params["attention"]["show_report"] = False
    Path("params.yaml").write_text(yaml.safe_dump(params))
    report = json.loads(Path("data/prepared/prepare_report.json").read_text())
    Path("data/prepared/prepare_report.json").write_text(json.dumps({**report, "demo": True}))
    drawn, logs = [], []
    with recording(drawn, logs):
        assert invoke(pipeline.commands["attention_maps"]).exit_code == 0
    assert any(CANARY in t for t in drawn) and not [line for line in logs if "show_report" in line]


def test_the_png_sweep_only_touches_a_folder_the_stage_made(pipeline_copy, pipeline):
    out = Path("data/plots/attention")
    assert (out / ".made-by-cxrpipe").read_text().strip() == "attention_maps"
    mine = Path("my-slides")
    mine.mkdir()
    (mine / "figure-1.png").write_bytes(b"\x89PNG mine")
    argv = list(pipeline.commands["attention_maps"])
    argv[argv.index("--out") + 1] = str(mine)
    res = invoke(argv)
    assert res.exit_code == 1 and "not made by the attention_maps stage" in res.output
    assert (mine / "figure-1.png").read_bytes() == b"\x89PNG mine"  # untouched
    shutil.rmtree(mine)
    assert invoke(argv).exit_code == 0 and len(list(mine.glob("*.png"))) == 2  # absent: made, marked


def test_every_output_file_respects_the_umask(pipeline):
    """Run under umask 002 (a shared group): every file any stage wrote is 0664. Before, the text cache's part
    files and the exported text heads were 0600 (safetensors), unreadable to colleagues."""
    want = 0o666 & ~UMASK
    files = [p for p in (pipeline.root / "data").rglob("*") if p.is_file()]
    modes = {str(p.relative_to(pipeline.root)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert len(files) > 200
    assert any(f.startswith("data/cache/text.h5.parts/part-") for f in modes)
    assert any(f.endswith("text_head.safetensors") for f in modes)
    assert {f: m for f, m in modes.items() if int(m, 8) != want} == {}


SENTENCES = {"pretrain.loss.sentence_weight": 0.5, "pipeline.sentences": ["sentences"],
             "pipeline.sentence_dep": "data/cache/sentences.h5"}


@pytest.mark.slow
def test_the_sentence_term_runs_through_its_stages_and_leaks_no_report_text(tmp_path):
    """The documented switch (docs/alignment.md) at test size, each stage with the command DVC interpolates:
    embed_sentences writes the cache pretrain's --sentence-cache default names, the text variants train with
    the term (their loss log splits it), mae does not; no file beyond the manifest and the text cache holds
    report text (the sentence cache keeps token ids and states, as the text cache does), nor does any log line
    or CLI output."""
    from cxrpipe.check import SENTENCE_CACHE

    run = run_pipeline(tmp_path / "run", SENTENCES, {"check", "demo_data", "prepare", "embed", "embed_sentences",
                                                     "pretrain"})
    assert run.stages[-4:] == ["embed_sentences@sentences", "pretrain@mae", "pretrain@multimodal", "pretrain@shuffled"]
    assert run.commands["embed_sentences@sentences"][-2:] == ["--out", SENTENCE_CACHE]
    assert all("--sentence-cache" not in argv for argv in run.commands.values())  # the default is the path
    for variant, has_term in (("mae", False), ("multimodal", True), ("shuffled", True)):
        header = (run.root / f"data/plots/pretrain-{variant}/loss.csv").read_text().splitlines()[0].split(",")
        assert ("sentence_loss" in header) == has_term, (variant, header)
    assert (run.root / SENTENCE_CACHE).exists() and leaks(run.root) == []
    assert not [line for line in run.logs if CANARY in line]
    assert not [s for s, out in run.outputs.items() if CANARY in out]
