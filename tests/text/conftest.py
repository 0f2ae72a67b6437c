"""Fixtures for stage one: a tiny LLaMA with a tokenizer trained here (offline, seconds), and a manifest."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cxrpipe.data.manifest import StudyRecord, write_manifest
from cxrpipe.labels import CHEXPERT_LABELS

SENTENCES = [
    "No acute cardiopulmonary process.",
    "There is a small left pleural effusion with adjacent atelectasis.",
    "The heart size is mildly enlarged. No pneumothorax is seen.",
    "Right lower lobe opacity may reflect pneumonia in the appropriate clinical setting.",
    "Lungs are clear. Cardiomediastinal silhouette is within normal limits.",
    "Endotracheal tube terminates 4 cm above the carina. Nasogastric tube in the stomach.",
    "Moderate pulmonary edema, increased since the prior study.",
    "Possible nondisplaced fracture of the right seventh rib.",
]
PROMPT = "The findings are:"


def train_tokenizer(add_bos: bool = True):
    """A byte-level BPE trained on the sentences above, wrapped like LLaMA-2's (prepends <s>, no pad)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(SENTENCES * 4 + [PROMPT], trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def tiny_llama_config(vocab_size: int):
    from transformers import LlamaConfig

    # every quantized size a multiple of 32: bitsandbytes' CPU 4-bit kernels need it on AVX512-BF16 CPUs
    return LlamaConfig(
        vocab_size=math.ceil(vocab_size / 32) * 32,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A folder with a random tiny LlamaForCausalLM (hidden 64, 2 layers) and its trained tokenizer."""
    import torch
    from transformers import LlamaForCausalLM

    tok = train_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(len(tok)))
    with torch.no_grad():  # larger than the 0.02 init, so that layers and quantization visibly matter
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    out = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def report(i: int) -> str:
    """Texts of varied lengths (1-4 sentences), with repeats every 7 studies."""
    i = i % 7
    return " ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(1 + i % 4))


def make_manifest(folder: Path, n: int = 24) -> Path:
    nan = tuple(math.nan for _ in CHEXPERT_LABELS)
    studies = [
        StudyRecord(
            study_id=50000000 + 37 * i,
            subject_id=10000000 + i,
            split="train",
            text="" if i == 5 else report(i),
            sections={},
            labels=nan,
        )
        for i in range(n)
    ]
    write_manifest(folder, [], studies)
    return folder


@pytest.fixture
def manifest_dir(tmp_path) -> Path:
    return make_manifest(tmp_path / "prepared")


@pytest.fixture(scope="session")
def make_tokenizer():
    """``make_tokenizer(add_bos=True)`` -> a freshly trained tokenizer."""
    return train_tokenizer


@pytest.fixture(scope="session")
def make_llama_config():
    """``make_llama_config(vocab_size)`` -> the tiny LlamaConfig."""
    return tiny_llama_config
