"""Exact rendered prompts: family rules (system folding, alternation), images, tool turns."""

from __future__ import annotations

import pytest
from PIL import Image

from mlx_server.engine.errors import InvalidRequestError
from mlx_server.engine.prompt import build_prompt, render
from mlx_server.engine.types import ImageInput, ImagePart, Message, TextPart, ToolCallSpec, ToolSpec


def msg(role, *parts, **kw):
    content = tuple(TextPart(p) if isinstance(p, str) else ImagePart(p) for p in parts)
    return Message(role=role, content=content, **kw)


IMG = ImageInput.from_pil(Image.new("RGB", (64, 64), (10, 200, 30)))
IMG2 = ImageInput.from_pil(Image.new("RGB", (64, 64), (200, 10, 30)))


@pytest.fixture
def tok(loaded):
    return lambda family: loaded(family).tokenizer


def test_gemma_folds_system_into_first_user_turn(tok):
    text, _ = render(tok("gemma3"), "gemma3", (msg("system", "Be brief."), msg("user", "Hi")))
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    )


def test_gemma_merges_consecutive_roles_and_several_systems(tok):
    messages = (
        msg("system", "A."),
        msg("user", "one"),
        msg("user", "two"),
        msg("assistant", "ok"),
        msg("system", "B."),
        msg("user", "three"),
    )
    text, _ = render(tok("gemma3"), "gemma3", messages)
    assert text == (
        "<bos><start_of_turn>user\nA.\n\nB.\n\none\n\ntwo<end_of_turn>\n"
        "<start_of_turn>model\nok<end_of_turn>\n"
        "<start_of_turn>user\nthree<end_of_turn>\n<start_of_turn>model\n"
    )


def test_gemma_conversation_starting_with_assistant_gets_an_empty_user_turn(tok):
    text, _ = render(tok("gemma3"), "gemma3", (msg("assistant", "Hello!"), msg("user", "Hi")))
    assert text == (
        "<bos><start_of_turn>user\n<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    )


def test_gemma_images_in_order(tok):
    text, images = render(tok("gemma3"), "gemma3", (msg("user", IMG, "compare", IMG2),))
    assert text == (
        "<bos><start_of_turn>user\n<start_of_image>compare<start_of_image><end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert images == (IMG, IMG2)


def test_qwen_default_system_and_images(tok):
    text, images = render(tok("qwen2_5_vl"), "qwen2_5_vl", (msg("user", "look", IMG),))
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nlook<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert images == (IMG,)


def test_qwen_keeps_turns_and_uses_given_system(tok):
    messages = (msg("system", "S"), msg("user", "a"), msg("assistant", "b"), msg("user", "c"))
    text, _ = render(tok("qwen2_5_vl"), "qwen2_5_vl", messages)
    assert text == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\na<|im_end|>\n"
        "<|im_start|>assistant\nb<|im_end|>\n<|im_start|>user\nc<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


TOOL = ToolSpec(
    name="get_weather",
    description="Weather for a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string", "description": "City name"}},
        "required": ["city"],
    },
)
CALL = ToolCallSpec(id="call_1", name="get_weather", arguments='{"city": "Paris"}')


def round_trip():
    return (
        msg("user", "Weather in Paris?"),
        Message(role="assistant", tool_calls=(CALL,)),
        Message(role="tool", content=(TextPart("sunny"),), tool_call_id="call_1"),
    )


def test_gemma_tool_round_trip(tok):
    text, _ = render(tok("gemma3"), "gemma3", round_trip(), (TOOL,))
    head, _, tail = text.partition("Weather in Paris?")
    assert head.startswith("<bos><start_of_turn>user\n") and "def get_weather(city: str)" in head
    assert "```tool_code" in head and "```tool_output" in head
    assert tail == (
        "<end_of_turn>\n<start_of_turn>model\n"
        '```tool_code\nget_weather(city="Paris")\n```<end_of_turn>\n'
        "<start_of_turn>user\n```tool_output\nsunny\n```<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_qwen_tool_round_trip(tok):
    text, _ = render(tok("qwen2_5_vl"), "qwen2_5_vl", round_trip(), (TOOL,))
    assert text.startswith(
        "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\nYou may call one or more"
    )
    assert '{"type": "function", "function": {"name": "get_weather"' in text
    assert text.endswith(
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_bad_history_arguments_are_a_400(tok):
    bad = ToolCallSpec(id="c", name="get_weather", arguments="[1, 2]")
    messages = (msg("user", "x"), Message(role="assistant", tool_calls=(bad,)))
    with pytest.raises(InvalidRequestError) as err:
        render(tok("gemma3"), "gemma3", messages, (TOOL,))
    assert err.value.param == "messages[1].tool_calls"


def test_empty_messages_and_system_images_refused(tok):
    with pytest.raises(InvalidRequestError):
        render(tok("qwen2_5_vl"), "qwen2_5_vl", ())
    with pytest.raises(InvalidRequestError):
        render(tok("qwen2_5_vl"), "qwen2_5_vl", (msg("system", IMG), msg("user", "x")))


@pytest.mark.parametrize("family", ["gemma3", "qwen2_5_vl"])
def test_build_prompt_spans_match_images(loaded, family):
    lm = loaded(family)
    p = build_prompt(lm.processor, family, (msg("user", IMG, "and", IMG2, "?"),))
    assert [s[2] for s in p.image_spans] == [IMG.sha256, IMG2.sha256]
    (s1, e1, _), (s2, e2, _) = p.image_spans
    assert e1 - s1 == e2 - s2 > 0 and e1 < s2
    assert p.token_ids.count(p.token_ids[s1]) == (e1 - s1) * 2
    assert "pixel_values" in p.model_inputs
    # No double BOS for Gemma (the template already writes it).
    assert p.token_ids[:2] != [lm.tokenizer.bos_token_id] * 2
