"""Hub files of tiny Qwen2-VL and Qwen2.5-VL checkpoints, laid out like Qwen's own repos."""

from __future__ import annotations

from typing import Any

from .families import Dims, added_tokens_decoder, chat_template
from .tokenizer import QWEN_ADDED, TrainedTokenizer, train_qwen

# Qwen's real patch, merge and temporal sizes: one image token per 28x28 pixels.
PATCH = 14
MERGE = 2
TEMPORAL = 2
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
MIN_PIXELS = (PATCH * MERGE) ** 2 * 4


def _vision(arch: str, d: Dims) -> dict[str, Any]:
    common = {
        "depth": d.vision_layers,
        "in_chans": 3,
        "num_heads": d.vision_heads,
        "patch_size": PATCH,
        "spatial_merge_size": MERGE,
        "spatial_patch_size": PATCH,
        "temporal_patch_size": TEMPORAL,
    }
    if arch == "qwen2_vl":
        return {
            **common,
            "embed_dim": d.vision_hidden,
            "hidden_act": "quick_gelu",
            "hidden_size": d.hidden,
            "mlp_ratio": d.vision_intermediate // d.vision_hidden,
            "model_type": "qwen2_vl",
        }
    # Full attention every fourth block, as in the real tower (7, 15, 23, 31 of 32).
    full = [i for i in range(d.vision_layers) if i % 4 == 3] or [d.vision_layers - 1]
    return {
        **common,
        "fullatt_block_indexes": full,
        "hidden_act": "silu",
        "hidden_size": d.vision_hidden,
        "intermediate_size": d.vision_intermediate,
        "model_type": "qwen2_5_vl",
        "out_hidden_size": d.hidden,  # must equal the language model's hidden size
        "tokens_per_second": 2,
        "window_size": 112,
    }


def _config(arch: str, d: Dims, ids: dict[str, int]) -> dict[str, Any]:
    # mrope_section must sum to head_dim / 2; the real split for head_dim 128 is [16, 24, 24].
    temporal = d.head_dim // 8
    spatial = (d.head_dim // 2 - temporal) // 2
    model_class = "Qwen2_5_VL" if arch == "qwen2_5_vl" else "Qwen2VL"
    return {
        "architectures": [f"{model_class}ForConditionalGeneration"],
        "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "hidden_act": "silu",
        "hidden_size": d.hidden,
        "image_token_id": ids["<|image_pad|>"],
        "initializer_range": 0.02,
        "intermediate_size": d.intermediate,
        "max_position_embeddings": d.context,
        "max_window_layers": d.layers,
        "model_type": arch,
        "num_attention_heads": d.heads,
        "num_hidden_layers": d.layers,
        "num_key_value_heads": d.kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {
            "mrope_section": [temporal, spatial, spatial],
            "rope_type": "default",
            "type": "mrope",
        },
        "rope_theta": 1000000.0,
        "sliding_window": d.context,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "video_token_id": ids["<|video_pad|>"],
        "vision_config": _vision(arch, d),
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "vocab_size": d.vocab,
    }


def _image_processor(arch: str, d: Dims) -> dict[str, Any]:
    return {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": CLIP_MEAN,
        "image_processor_type": "Qwen2VLImageProcessor",
        "image_std": CLIP_STD,
        "max_pixels": d.image,
        "merge_size": MERGE,
        "min_pixels": MIN_PIXELS,
        "patch_size": PATCH,
        "processor_class": _processor_class(arch),
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"longest_edge": d.image, "shortest_edge": MIN_PIXELS},
        "temporal_patch_size": TEMPORAL,
    }


def _processor_class(arch: str) -> str:
    return "Qwen2_5_VLProcessor" if arch == "qwen2_5_vl" else "Qwen2VLProcessor"


def _tokenizer_config(arch: str, d: Dims, tok: TrainedTokenizer) -> dict[str, Any]:
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added_tokens_decoder(tok),
        "additional_special_tokens": _additional_special_tokens(),
        "bos_token": None,
        "chat_template": chat_template(arch),
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": d.context,
        "pad_token": "<|endoftext|>",
        "padding_side": "left",
        "processor_class": _processor_class(arch),
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def _additional_special_tokens() -> list[str]:
    return [t for t, special in QWEN_ADDED if special and t != "<|endoftext|>"]


def hub_files(arch: str, d: Dims) -> tuple[TrainedTokenizer, dict[str, Any]]:
    """The trained tokenizer and every JSON file of the checkpoint but the weights."""
    tok = train_qwen(d.vocab)
    ids = tok.ids
    image_processor = _image_processor(arch, d)
    video_processor = {k: v for k, v in image_processor.items() if k != "image_processor_type"} | {
        "fps": 2.0,
        "video_processor_type": "Qwen2VLVideoProcessor",
    }
    generation = {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"],
    }
    special_map = {
        "additional_special_tokens": _additional_special_tokens(),
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
    }
    return tok, {
        "config.json": _config(arch, d, ids),
        "generation_config.json": generation,
        "preprocessor_config.json": image_processor,
        "video_preprocessor_config.json": video_processor,
        "tokenizer_config.json": _tokenizer_config(arch, d, tok),
        "special_tokens_map.json": special_map,
        "chat_template.json": {"chat_template": chat_template(arch)},
    }
