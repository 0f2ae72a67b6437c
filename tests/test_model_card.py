"""The model card beside each exported encoder: data and its licence, method, metrics, intended use."""

from __future__ import annotations

import json

import pytest

from cxrpipe.model_card import model_card, write_model_card

RETRIEVAL = {"retrieval": {"n_images": 99, "n_reports": 97, "recall@1": 0.0404, "recall@5": 0.1616,
                           "recall@10": 0.2626, "chance@1": 0.0103, "chance@5": 0.0516, "chance@10": 0.1031}}


def config(variant: str = "multimodal", **params) -> dict:
    return {"variant": variant, "description": "ViT, 12 blocks, width 768", "pixel_mean": 0.5, "pixel_std": 0.25,
            "num_features": 768, "pretrained_cfg": {"input_size": [1, 224, 224]},
            "params": {"epochs": 100, "batch_size": 256, "seed": 0, "model": {"mask_ratio": 0.5},
                       "loss": {"weight_text": 1.0, "kind": "margin"}, **params}}


def report(source: str, demo: bool = False) -> dict:
    return {"source": source, "demo": demo, "counts": {"by_split": {"train": {"images": 368960, "studies": 222758}}}}


def test_mimic_multimodal_card_names_the_dua_the_llm_licence_and_the_numbers():
    card = model_card(config(), report("mimic-cxr-jpg"), RETRIEVAL, "meta-llama/Llama-2-7b-hf")
    assert card.startswith("# cxrpipe encoder `multimodal`") and "**Not for clinical use.**" in card
    assert "PhysioNet Credentialed Health Data License 1.5.0" in card and "never on a public hub" in card
    assert "368,960 images of 222,758 studies" in card
    assert "Llama 2 Community License" in card and "Multi-Modal Integration in Medical Imaging" in card
    assert "R@1 0.040, R@5 0.162, R@10 0.263 (chance 0.010 / 0.052 / 0.103)" in card
    assert "data/reports/comparison.md" in card and "local-dir:" in card and "1 channel(s), 224 x 224 px" in card


@pytest.mark.parametrize("source,demo,text", [
    ("iu-xray", False, "BY-NC-ND 4.0"), ("mimic-cxr-jpg", True, "no patient data"), ("mimic-cxr", False, "DICOM")])
def test_the_data_terms_follow_the_source(source, demo, text):
    card = model_card(config(), report(source, demo), RETRIEVAL, "data/models/text-model")
    assert text in card and "SmolLM2 (Apache-2.0)" in card
    assert ("PhysioNet" in card) == (source.startswith("mimic") and not demo)


def test_mae_and_random_cards_say_what_they_are():
    mae = model_card(config("mae"), report("mimic-cxr-jpg"), RETRIEVAL, "meta-llama/Llama-2-7b-hf")
    assert "Images alone" in mae and "Llama" not in mae  # the text never reached it
    rnd = model_card(config("random", trained=False), {}, None, None)
    assert "Not trained" in rnd and "None: never trained." in rnd and "R@1" not in rnd


def test_write_model_card_reads_the_folder(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(config("mae")))
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "prepare_report.json").write_text(json.dumps(report("iu-xray")))
    path = write_model_card(tmp_path / "model", tmp_path / "prepared", RETRIEVAL)
    assert path.name == "README.md" and "BY-NC-ND" in path.read_text() and "R@10 0.263" in path.read_text()
