"""Hub files of a tiny Gemma 3 checkpoint, laid out like google/gemma-3-4b-it's."""

from __future__ import annotations

from typing import Any

from .families import Dims, added_tokens_decoder, chat_template
from .tokenizer import TrainedTokenizer, train_gemma

IMAGE_TOKENS = {
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>",
}


def _config(d: Dims, ids: dict[str, int]) -> dict[str, Any]:
    text = {
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "head_dim": d.head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": d.hidden,
        "intermediate_size": d.intermediate,
        "max_position_embeddings": d.context,
        # mlx-vlm reads this from text_config; it must equal the processor's image_seq_length.
        "mm_tokens_per_image": d.mm_tokens,
        "model_type": "gemma3_text",
        "num_attention_heads": d.heads,
        "num_hidden_layers": d.layers,
        "num_key_value_heads": d.kv_heads,
        "query_pre_attn_scalar": d.head_dim,
        "rms_norm_eps": 1e-06,
        "rope_local_base_freq": 10000.0,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "rope_theta": 1000000.0,
        "sliding_window": d.sliding_window,
        "sliding_window_pattern": d.sliding_pattern,
        "vocab_size": d.vocab,
    }
    vision = {
        "hidden_size": d.vision_hidden,
        "image_size": d.image,
        "intermediate_size": d.vision_intermediate,
        "model_type": "siglip_vision_model",
        "num_attention_heads": d.vision_heads,
        "num_hidden_layers": d.vision_layers,
        "patch_size": d.patch,
        "vision_use_head": False,
    }
    return {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "boi_token_index": ids["<start_of_image>"],
        "eoi_token_index": ids["<end_of_image>"],
        "eos_token_id": [ids["<eos>"], ids["<end_of_turn>"]],
        "image_token_index": ids["<image_soft_token>"],
        "initializer_range": 0.02,
        "mm_tokens_per_image": d.mm_tokens,
        "model_type": "gemma3",
        "pad_token_id": ids["<pad>"],
        "text_config": text,
        "torch_dtype": "bfloat16",
        "vision_config": vision,
    }


def _image_processor(d: Dims) -> dict[str, Any]:
    return {
        "do_convert_rgb": None,
        "do_normalize": True,
        "do_pan_and_scan": None,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "Gemma3ImageProcessor",
        "image_seq_length": d.mm_tokens,
        "image_std": [0.5, 0.5, 0.5],
        "pan_and_scan_max_num_crops": None,
        "pan_and_scan_min_crop_size": None,
        "pan_and_scan_min_ratio_to_activate": None,
        "processor_class": "Gemma3Processor",
        "resample": 2,
        "rescale_factor": 1 / 255,
        "size": {"height": d.image, "width": d.image},
    }


def _tokenizer_config(d: Dims, tok: TrainedTokenizer) -> dict[str, Any]:
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added_tokens_decoder(tok),
        **IMAGE_TOKENS,
        "bos_token": "<bos>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "<eos>",
        "extra_special_tokens": IMAGE_TOKENS,
        "model_max_length": d.context,
        "pad_token": "<pad>",
        "padding_side": "left",
        "processor_class": "Gemma3Processor",
        "spaces_between_special_tokens": False,
        "tokenizer_class": "GemmaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }


def hub_files(d: Dims) -> tuple[TrainedTokenizer, dict[str, Any]]:
    """The trained tokenizer and every JSON file of the checkpoint but the weights."""
    tok = train_gemma(d.vocab)
    ids = tok.ids
    special_map = {
        **IMAGE_TOKENS,
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
    }
    generation = {
        "bos_token_id": ids["<bos>"],
        "eos_token_id": [ids["<eos>"], ids["<end_of_turn>"]],
        "pad_token_id": ids["<pad>"],
    }
    return tok, {
        "config.json": _config(d, ids),
        "generation_config.json": generation,
        "preprocessor_config.json": _image_processor(d),
        "processor_config.json": {
            "image_seq_length": d.mm_tokens,
            "processor_class": "Gemma3Processor",
        },
        "tokenizer_config.json": _tokenizer_config(d, tok),
        "special_tokens_map.json": dict(sorted(special_map.items())),
        "chat_template.json": {"chat_template": chat_template("gemma3")},
    }
