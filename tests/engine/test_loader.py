from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from mlx_server.engine.errors import ModelNotFoundError
from mlx_server.engine.loader import choose_dtype, load_model, resolve_model_path


def floating_dtypes(model: nn.Module) -> set:
    return {
        v.dtype for _, v in tree_flatten(model.parameters()) if mx.issubdtype(v.dtype, mx.floating)
    }


def test_auto_dtype_picks_float32_on_the_cpu_backend(loaded):
    lm = loaded("qwen2_5_vl")
    if mx.metal.is_available():
        pytest.skip("on Metal bf16 may win; this checks the CPU backend")
    assert choose_dtype(lm.model, "auto") == mx.float32
    assert lm.dtype == mx.float32 and floating_dtypes(lm.model) == {mx.float32}


def test_explicit_dtype_is_applied(tiny_dirs):
    lm = load_model(str(tiny_dirs["gemma3"]), dtype="bfloat16")
    assert lm.dtype == mx.bfloat16 and floating_dtypes(lm.model) == {mx.bfloat16}


def test_eos_and_context_come_from_the_checkpoint(loaded, tiny_dirs):
    lm = loaded("gemma3")
    cfg = json.loads((tiny_dirs["gemma3"] / "generation_config.json").read_text())
    assert set(cfg["eos_token_id"]) <= set(lm.eos_token_ids)
    assert lm.tokenizer.convert_tokens_to_ids("<end_of_turn>") in lm.eos_token_ids
    assert lm.context_length == 8192


def test_missing_models_give_one_clear_line(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model_path(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="neither a directory nor a hub id"):
        resolve_model_path("./does/not/exist")
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model_path("nobody-here/no-such-model-xyz", offline=True)
    assert "HF_HUB_OFFLINE" in err.value.message and "\n" not in err.value.message


def test_unsupported_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelNotFoundError, match="unsupported model_type"):
        load_model(str(tmp_path))
