import json
import os
from pathlib import Path

import pytest
import torch

# Tiny models gain nothing from intra-op threads, and on a loaded 2-core machine torch's spinning
# thread pool makes them 50x slower (measured: 21 ms vs 1-2 s per tiny UNet forward).
torch.set_num_threads(int(os.environ.get("GATEBENCH_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own gatebench cache folder (hash cache, reference statistics)."""
    monkeypatch.setenv("GATEBENCH_CACHE", str(tmp_path_factory.mktemp("gatebench-cache")))
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --- scoring: a tiny CLIP (model + processor) built in-process, no hub, no download -----------
def build_tiny_clip(folder: Path, seed: int = 0):
    """A 2-layer CLIPModel (32-px images, char-level tokenizer) and its CLIPProcessor.

    The vocabulary covers lowercase letters and the CJK characters the tests use; other
    characters map to the unknown token, which is fine for shape-of-the-plumbing tests.
    """
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "<|unk|>": 2}
    for ch in "abcdefghijklmnopqrstuvwxyz猫狗红色方块一只在草地上的":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                              unk_token="<|unk|>")
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 37,
                     "num_hidden_layers": 2, "num_attention_heads": 4,
                     "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32,
                       "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4},
        projection_dim=16)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32},
                                         crop_size={"height": 32, "width": 32})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return model, processor


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """(model, processor) of a tiny random CLIP, shared by the scoring tests."""
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))
