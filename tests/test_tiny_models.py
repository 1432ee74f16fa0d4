"""The project's tiny random-weight checkpoints load and run like real hub checkpoints."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map
from mlx_vlm import generate, load
from mlx_vlm.models.cache import KVCache, RotatingKVCache
from mlx_vlm.utils import prepare_inputs
from PIL import Image

from mlx_server import testing
from mlx_server.testing import build as build_module

SPECIAL_TOKENS = {
    "gemma3": [
        "<pad>",
        "<eos>",
        "<bos>",
        "<unk>",
        "<mask>",
        "<start_of_turn>",
        "<end_of_turn>",
        "<start_of_image>",
        "<end_of_image>",
        "<image_soft_token>",
    ],
    "qwen": [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|object_ref_start|>",
        "<|object_ref_end|>",
        "<|box_start|>",
        "<|box_end|>",
        "<|quad_start|>",
        "<|quad_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|vision_pad|>",
        "<|image_pad|>",
        "<|video_pad|>",
        "<tool_call>",
        "</tool_call>",
    ],
}
EOS_TOKENS = {"gemma3": ["<eos>", "<end_of_turn>"], "qwen": ["<|im_end|>", "<|endoftext|>"]}
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
]
RENDERED = {
    "gemma3": "<bos><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n"
    "<start_of_turn>model\nHello!<end_of_turn>\n"
    "<start_of_turn>user\n<start_of_image>What is this?<end_of_turn>\n"
    "<start_of_turn>model\n",
    "qwen": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>\n"
    "<|im_start|>assistant\n",
}
ROUND_TRIP = [
    "Hello, world!",
    "  leading and trailing spaces  ",
    "Tabs\tand\nnew lines\n\n  indented",
    'def f(x):\n    return {"a": [1, 2.5, None]}  # comment',
    "Ça va? Größe, ¿dónde? Καλημέρα, привет, 你好世界, こんにちは, 안녕",
    "emoji 😀🚀❤️ and symbols ∑ ≤ € ™ \x00\x7f",
    "<not a special token> <|im_not|> rare: ʤ ꙮ 𝔘",
]


def family(arch: str) -> str:
    return "gemma3" if arch == "gemma3" else "qwen"


@pytest.fixture(scope="module", params=testing.ARCHS)
def checkpoint(request, tmp_path_factory):
    arch = request.param
    path = testing.build_tiny_model(arch, tmp_path_factory.mktemp(arch) / "model")
    model, processor = load(str(path))
    config = json.loads((path / "config.json").read_text())
    return arch, path, model, processor, config


def image_token_id(config: dict) -> int:
    return config.get("image_token_index", config.get("image_token_id"))


def test_public_constants():
    assert testing.ARCHS == ("gemma3", "qwen2_5_vl", "qwen2_vl")
    assert testing.SIZES == ("tiny", "bench")


def test_loads_as_a_hub_checkpoint(checkpoint):
    arch, path, model, processor, config = checkpoint
    assert config["model_type"] == arch
    assert model.config.model_type == arch
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (path / name).is_file(), name
    for name in ("generation_config.json", "preprocessor_config.json", "chat_template.json"):
        assert (path / name).is_file(), name


def test_four_bit_group_64_with_unquantized_vision(checkpoint):
    _, _, model, _, config = checkpoint
    assert config["quantization"]["bits"] == 4
    assert config["quantization"]["group_size"] == 64
    linear = (nn.Linear, nn.QuantizedLinear)
    language = [m for _, m in model.language_model.named_modules() if isinstance(m, linear)]
    assert language and all(isinstance(m, nn.QuantizedLinear) for m in language)
    assert {(m.bits, m.group_size) for m in language} == {(4, 64)}
    assert isinstance(model.language_model.model.embed_tokens, nn.QuantizedEmbedding)
    vision = [m for _, m in model.vision_tower.named_modules() if isinstance(m, linear)]
    assert vision and all(type(m) is nn.Linear for m in vision)
    # Unquantized weights are bf16, as in the published checkpoints.
    floats = [v for _, v in tree_flatten(model.parameters()) if mx.issubdtype(v.dtype, mx.floating)]
    assert {v.dtype for v in floats} == {mx.bfloat16}


def test_every_special_token_is_one_id(checkpoint):
    arch, _, _, processor, config = checkpoint
    tok = processor.tokenizer
    ids = {}
    for token in SPECIAL_TOKENS[family(arch)]:
        encoded = tok.encode(token, add_special_tokens=False)
        assert len(encoded) == 1, (token, encoded)
        assert tok.convert_tokens_to_ids(token) == encoded[0]
        ids[token] = encoded[0]
    assert len(set(ids.values())) == len(ids)
    image = "<image_soft_token>" if arch == "gemma3" else "<|image_pad|>"
    assert image_token_id(config) == ids[image]
    if arch == "gemma3":
        assert config["boi_token_index"] == ids["<start_of_image>"]
        assert config["eoi_token_index"] == ids["<end_of_image>"]
        assert tok.image_token_id == ids[image]
        assert (tok.boi_token, tok.eoi_token) == ("<start_of_image>", "<end_of_image>")
    else:
        assert config["video_token_id"] == ids["<|video_pad|>"]
        assert config["vision_start_token_id"] == ids["<|vision_start|>"]
        assert config["vision_end_token_id"] == ids["<|vision_end|>"]


def test_vocab_and_eos_ids(checkpoint):
    arch, path, _, processor, config = checkpoint
    tok = processor.tokenizer
    vocab = config["text_config"]["vocab_size"] if arch == "gemma3" else config["vocab_size"]
    assert len(tok) == vocab and vocab % 64 == 0
    generation = json.loads((path / "generation_config.json").read_text())
    eos = [tok.convert_tokens_to_ids(t) for t in EOS_TOKENS[family(arch)]]
    assert generation["eos_token_id"] == eos


def test_chat_template_renders_the_family_markers(checkpoint):
    arch, _, _, processor, _ = checkpoint
    tok = processor.tokenizer
    rendered = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert rendered == RENDERED[family(arch)]
    if arch != "gemma3":
        plain = tok.apply_chat_template(CONVERSATION[1:2], tokenize=False)
        assert plain.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_tokenizer_round_trips(checkpoint, text):
    tok = checkpoint[3].tokenizer
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode()) or len(text) < 8  # merges were learned


def test_forward_and_generate_with_an_image(checkpoint):
    arch, _, model, processor, config = checkpoint
    tok = processor.tokenizer
    prompt = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    inputs = prepare_inputs(
        processor, images=[image], prompts=[prompt], image_token_index=image_token_id(config)
    )
    ids = inputs["input_ids"]
    n_image = int((ids == image_token_id(config)).sum().item())
    assert n_image == (16 if arch == "gemma3" else 4)  # a handful of tokens per 64x64 image
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values")}
    extra["mask"] = extra.pop("attention_mask")
    logits = model(ids, inputs["pixel_values"], **extra).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    assert mx.all(mx.isfinite(logits)).item()
    assert logits.astype(mx.float32).std().item() > 0.1

    # The image reaches the language model: another image changes the next-token logits.
    inputs2 = prepare_inputs(
        processor,
        images=[Image.fromarray(255 - pixels)],
        prompts=[prompt],
        image_token_index=image_token_id(config),
    )
    logits2 = model(ids, inputs2["pixel_values"], **extra).logits
    assert not mx.allclose(logits[0, -1], logits2[0, -1]).item()

    result = generate(model, processor, prompt, image=[image], max_tokens=4, temperature=0.0)
    assert 1 <= result.generation_tokens <= 4
    assert result.prompt_tokens == ids.shape[1]


def test_float32_compute_stays_finite(checkpoint):
    """The server computes in float32 on CPU: cast what is not quantized, as it will."""
    arch, path, _, processor, config = checkpoint
    model, _ = load(str(path))
    model.update(
        tree_map(
            lambda v: v.astype(mx.float32) if v.dtype == mx.bfloat16 else v, model.parameters()
        )
    )
    tok = processor.tokenizer
    prompt = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    image = Image.fromarray(np.full((64, 64, 3), 200, dtype=np.uint8))
    inputs = prepare_inputs(
        processor, images=[image], prompts=[prompt], image_token_index=image_token_id(config)
    )
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values")}
    extra["mask"] = extra.pop("attention_mask")
    logits = model(inputs["input_ids"], inputs["pixel_values"], **extra).logits
    assert logits.dtype == mx.float32
    assert mx.all(mx.isfinite(logits)).item()


def test_long_prompt_with_8_bit_kv_cache(checkpoint):
    arch, _, model, processor, config = checkpoint
    tok = processor.tokenizer
    text = "The keeper counted the steps of the tower. " * 40
    prompt = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False)
    assert len(tok.encode(prompt)) > 200  # past Gemma's sliding window of 128
    result = generate(
        model,
        processor,
        prompt,
        max_tokens=3,
        temperature=0.0,
        **(
            {} if arch == "gemma3" else {"kv_bits": 8, "kv_group_size": 64, "quantized_kv_start": 0}
        ),
    )
    assert result.generation_tokens >= 1
    if arch == "gemma3":
        caches = model.language_model.make_cache()
        assert any(type(c) is KVCache for c in caches)
        windows = [c.max_size for c in caches if isinstance(c, RotatingKVCache)]
        assert windows == [128]
        assert config["text_config"]["max_position_embeddings"] >= 4096
    else:
        assert config["max_position_embeddings"] >= 4096


def _digest(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


@pytest.mark.parametrize("arch", testing.ARCHS)
def test_builds_are_deterministic(arch, tmp_path):
    first = testing.build_tiny_model(arch, tmp_path / "a")
    second = testing.build_tiny_model(arch, tmp_path / "b")
    other_seed = testing.build_tiny_model(arch, tmp_path / "c", seed=1)
    assert _digest(first) == _digest(second)
    assert _digest(first)["model.safetensors"] != _digest(other_seed)["model.safetensors"]
    assert _digest(first)["tokenizer.json"] == _digest(other_seed)["tokenizer.json"]


def test_build_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="arch"):
        testing.build_tiny_model("llama", tmp_path / "x")
    with pytest.raises(ValueError, match="size"):
        testing.build_tiny_model("gemma3", tmp_path / "x", size="huge")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        testing.build_tiny_model("gemma3", tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_cached_tiny_model_builds_once(tmp_path, monkeypatch):
    calls = []
    real_build = build_module.build_tiny_model

    def counting_build(*args, **kwargs):
        calls.append(args)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(build_module, "build_tiny_model", counting_build)
    first = testing.cached_tiny_model("qwen2_vl", root=tmp_path)
    second = testing.cached_tiny_model("qwen2_vl", root=tmp_path)
    assert first == second and len(calls) == 1
    assert first.parent == tmp_path
    assert first.name == f"qwen2_vl-tiny-{testing.builder_version()}"
    assert (first / "model.safetensors").is_file()
    # Nothing half-built is left next to it.
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [first.name]


def test_cached_tiny_model_concurrent_callers_share_one_build(tmp_path, monkeypatch):
    calls = []
    real_build = build_module.build_tiny_model

    def counting_build(*args, **kwargs):
        calls.append(args)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(build_module, "build_tiny_model", counting_build)
    results = []
    threads = [
        threading.Thread(
            target=lambda: results.append(testing.cached_tiny_model("gemma3", root=tmp_path))
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(set(results)) == 1 and len(calls) == 1
