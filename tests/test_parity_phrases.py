"""Phrase vectors as each family's reference makes them, and whether the padding mode matters.

User family (the user's code): a layout's names tokenized together, padding to the longest,
max_length 32, last hidden state mean-pooled over the mask (restated in
reference_user.phrase_vectors).
GLIGEN (diffusers' pipeline): the phrases tokenized together with padding=True, the attention
mask passed, ``pooler_output``. gatebench pads to the longest (the cheapest); these tests show the
vectors are the same under max_length padding too, for CLIP (causal, right padding) and ChatGLM
(left padding, RoPE positions from the tokenizer's position_ids).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gatebench.models import load_base_model
from tests import model_builders
from tests.reference_user import phrase_vectors

NAMES = ["red circle", "", "the big blue triangle on the left", "摩托车"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("phrases")
    return {"sd": load_base_model(model_builders.make_tiny_sd(root)),
            "sdxl": load_base_model(model_builders.make_tiny_sdxl(root)),
            "kolors": load_base_model(model_builders.make_tiny_kolors(root))}


def _encoder(model):
    if model.kind == "sdxl":
        return model.tokenizer_2, model.text_encoder_2
    return model.tokenizer, model.text_encoder


@pytest.mark.parametrize("kind", ["sd", "sdxl", "kolors"])
def test_user_phrase_vectors_equal_the_users_recipe(models, kind: str) -> None:
    model = models[kind]
    tokenizer, encoder = _encoder(model)
    theirs = phrase_vectors(NAMES, tokenizer, encoder, seq_first=kind == "kolors")
    torch.testing.assert_close(model.encode_phrases(NAMES), theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["sd", "kolors"])
def test_padding_mode_does_not_change_the_vectors(models, kind: str) -> None:
    model = models[kind]
    tokenizer, encoder = _encoder(model)
    vectors = {}
    for padding in ("longest", "max_length"):
        tokens = tokenizer(NAMES[2:3] + NAMES[:1], padding=padding, max_length=32,
                           truncation=True, return_tensors="pt")
        kwargs = {k: v for k, v in tokens.items() if k in ("attention_mask", "position_ids")}
        with torch.no_grad():
            hidden = encoder(input_ids=tokens["input_ids"], **kwargs).last_hidden_state
        hidden = hidden.permute(1, 0, 2) if kind == "kolors" else hidden
        m = tokens["attention_mask"].float()[..., None]
        vectors[padding] = (hidden * m).sum(1) / m.sum(1)
    assert tokens["input_ids"].shape[1] == 32                       # max_length really padded
    torch.testing.assert_close(vectors["longest"], vectors["max_length"], rtol=1e-5, atol=1e-6)


def test_gligen_phrases_are_the_pipelines_pooler_output(models, tmp_path: Path) -> None:
    from gatebench.checkpoint import inspect_checkpoint, load_adapter
    from tests.test_parity_pipelines import _gligen_checkpoint

    model = load_base_model(model_builders.make_tiny_sd(tmp_path))
    ckpt, _ = _gligen_checkpoint(model.path, tmp_path / "g.pt")
    adapter = load_adapter(ckpt, model, inspect_checkpoint(ckpt))
    try:
        ours = adapter.encode_phrases(["red circle", "the big blue triangle"])
    finally:
        adapter.remove()
    # the pipeline's own lines: tokenizer(gligen_phrases, padding=True) -> text_encoder(**inputs)
    inputs = model.tokenizer(["red circle", "the big blue triangle"], padding=True,
                             return_tensors="pt")
    with torch.no_grad():
        theirs = model.text_encoder(**inputs).pooler_output
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
