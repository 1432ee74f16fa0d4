"""ConstraintCompiler / ConstraintMatcher on throwaway tokenizers with random logits.

Random logits at temperature 1.0 stand in for a random-weight model: the answers can only parse
and validate because the mask does the work. Two tokenizer styles: Qwen-like byte-level BPE and
Gemma-like sentencepiece BPE with byte fallback, both with digits split one by one.
"""

from __future__ import annotations

import json
import random

import jsonschema
import mlx.core as mx
import numpy as np
import pytest
from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)
from transformers import PreTrainedTokenizerFast

from mlx_server.engine.constraints import (
    ConstraintCompiler,
    ConstraintViolationError,
    constraint_for_grammar,
    constraint_for_json_schema,
    constraint_for_response_format,
    lark_json,
)
from mlx_server.engine.errors import InvalidConstraintError
from mlx_server.engine.types import Constraint

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "this",
    "are",
    "or",
    "from",
    "at",
    "which",
    "but",
    "image",
    "photo",
    "person",
    "car",
    "tree",
    "sky",
    "label",
    "category",
    "caption",
    "object",
    "box",
    "score",
    "red",
    "green",
    "blue",
    "small",
    "large",
    "left",
    "right",
    "top",
    "bottom",
    "true",
    "false",
    "null",
    "name",
    "value",
    "items",
    "count",
    "color",
    "shape",
    "dog",
]
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>"]
QWEN_SPECIAL += ["<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
GEMMA_SPECIAL = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]
GEMMA_SPECIAL += ["<start_of_image>", "<end_of_image>"]


def _corpus(lines: int, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(lines):
        r = rng.random()
        if r < 0.45:
            yield " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))).capitalize() + "."
        elif r < 0.9:
            value = rng.choice([rng.randint(-999, 99999), round(rng.random(), 3), True, None])
            obj = {rng.choice(WORDS): rng.choice([value, " ".join(rng.choices(WORDS, k=3))])}
            obj["items"] = rng.choices(WORDS, k=rng.randint(0, 3))
            yield json.dumps(obj, indent=rng.choice([None, 2]))
        else:  # some CJK, Latin-1 and Cyrillic so multibyte tokens exist
            pool = [(0x4E00, 0x4E80), (0xC0, 0x17F), (0x410, 0x44F)]
            yield "".join(chr(rng.randint(*rng.choice(pool))) for _ in range(rng.randint(2, 9)))


def _qwen_like() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2500,
        special_tokens=QWEN_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(3000), trainer=trainer)
    tok.add_tokens(["<tool_call>", "</tool_call>"])  # added but not special, as in Qwen2.5
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def _gemma_like() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("▁", behavior="merged_with_next"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=1500, special_tokens=GEMMA_SPECIAL, limit_alphabet=150, show_progress=False
    )
    tok.train_from_iterator(_corpus(3000, seed=1), trainer=trainer)
    # Rebuild with <0xNN> byte tokens in the model vocab, the way sentencepiece exports do.
    data = json.loads(tok.to_str())
    old = sorted(data["model"]["vocab"], key=data["model"]["vocab"].get)
    names = GEMMA_SPECIAL + [f"<0x{b:02X}>" for b in range(256)]
    names += [name for name in old if name not in GEMMA_SPECIAL]
    data["model"]["vocab"] = {name: i for i, name in enumerate(names)}
    data["model"]["byte_fallback"] = True
    data["added_tokens"] = [dict(a, id=names.index(a["content"])) for a in data["added_tokens"]]
    tok = Tokenizer.from_str(json.dumps(data))
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tok.add_special_tokens([AddedToken("<image_soft_token>", special=True)])
    tok.add_tokens(["<start_of_audio>"])  # a non-special multimodal placeholder
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", bos_token="<bos>")


@pytest.fixture(scope="module")
def qwen_tok():
    return _qwen_like()


@pytest.fixture(scope="module")
def gemma_tok():
    return _gemma_like()


def _stops(tok) -> list[int]:
    names = (
        ["<|im_end|>", "<|endoftext|>"]
        if "<|im_end|>" in tok.get_vocab()
        else ["<end_of_turn>", "<eos>"]
    )
    return tok.convert_tokens_to_ids(names)


@pytest.fixture(scope="module")
def qwen(qwen_tok):
    # Padded embedding rows, like Qwen2-VL's 151936 logits for a 151665-token tokenizer.
    return ConstraintCompiler(qwen_tok, _stops(qwen_tok), vocab_size=len(qwen_tok) + 61)


@pytest.fixture(scope="module")
def gemma(gemma_tok):
    return ConstraintCompiler(gemma_tok, _stops(gemma_tok), vocab_size=len(gemma_tok) + 64)


def sample(compiler, constraint, seed, max_tokens=600, dtype=mx.float32):
    """Random-logit decode loop as the engine drives it; returns (tokens, stop id or None, matcher)."""
    matcher = compiler.start(constraint)
    rng = np.random.default_rng(seed)
    key = mx.random.key(seed)
    tokens: list[int] = []
    for _ in range(max_tokens):
        logits = mx.array(rng.standard_normal((1, compiler.vocab_size)).astype(np.float32))
        key, sub = mx.random.split(key)
        token = int(mx.random.categorical(matcher.apply(logits.astype(dtype)), key=sub).item())
        matcher.advance(token)
        if token in compiler.stop_token_ids:
            return tokens, token, matcher
        tokens.append(token)
    return tokens, None, matcher


ANNOTATION = {
    "type": "object",
    "properties": {
        "caption": {"type": "string", "maxLength": 40},
        "category": {"enum": ["person", "animal", "vehicle", "other"]},
        "count": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
        "bbox": {
            "type": "object",
            "properties": {k: {"type": "number"} for k in "xywh"},
            "required": list("xywh"),
            "additionalProperties": False,
        },
        "outdoor": {"type": "boolean"},
        "note": {"type": ["string", "null"], "maxLength": 10},
    },
    "required": ["caption", "category", "count", "tags", "bbox", "outdoor", "note"],
    "additionalProperties": False,
}
TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "label": {"type": "string", "pattern": "^[a-z]{1,8}$"},
                "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2},
            },
            "required": ["label", "kids"],
            "additionalProperties": False,
        }
    },
    "$ref": "#/$defs/node",
}
SCHEMAS = {
    "annotation": ANNOTATION,
    "tree_ref": TREE,
    "choice": {
        "type": "object",
        "properties": {
            "answer": {"anyOf": [{"type": "integer", "maximum": 99}, {"const": "unknown"}]},
            "pairs": {
                "type": "array",
                "items": {
                    "type": "array",
                    "prefixItems": [{"type": "boolean"}, {"type": "null"}],
                    "items": False,
                },
                "minItems": 1,
                "maxItems": 3,
            },
            "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        },
        "required": ["answer", "pairs", "ratio"],
        "additionalProperties": False,
    },
    "optional_props": {
        "type": "object",
        "properties": {"a": {"type": "integer", "multipleOf": 3}, "b": {"type": "boolean"}},
        "minProperties": 1,
        "additionalProperties": False,
    },
    "top_level_array": {
        "type": "array",
        "items": {"enum": ["x", "y", 3, None]},
        "minItems": 2,
        "maxItems": 5,
    },
}
SPECIAL_NEVER = {"<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|im_start|>"}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_random_logits_always_validate(qwen, qwen_tok, name):
    schema = SCHEMAS[name]
    constraint = constraint_for_response_format(
        {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    )
    never = set(qwen_tok.convert_tokens_to_ids(sorted(SPECIAL_NEVER)))
    for seed in range(20):
        tokens, stop, matcher = sample(qwen, constraint, seed)
        assert stop in qwen.stop_token_ids, (
            f"seed {seed} did not finish: {qwen_tok.decode(tokens)!r}"
        )
        assert matcher.is_finished
        assert not never & set(tokens)
        assert all(t < len(qwen_tok) for t in tokens)
        jsonschema.validate(json.loads(qwen_tok.decode(tokens)), schema)


def test_gemma_like_tokenizer_with_byte_fallback(gemma, gemma_tok):
    constraint = constraint_for_json_schema(ANNOTATION)
    banned = set(gemma_tok.convert_tokens_to_ids(["<image_soft_token>", "<start_of_audio>"]))
    assert banned <= gemma.banned_token_ids
    for seed in range(20):
        tokens, stop, _ = sample(gemma, constraint, seed, dtype=mx.bfloat16)
        assert stop in gemma.stop_token_ids
        assert not banned & set(tokens)
        jsonschema.validate(json.loads(gemma_tok.decode(tokens)), ANNOTATION)


def test_json_object_gives_an_object(qwen, qwen_tok):
    constraint = constraint_for_response_format({"type": "json_object"})
    finished = 0
    for seed in range(20):
        tokens, stop, _ = sample(qwen, constraint, seed, max_tokens=400)
        if stop is None:  # free-form values may run past the budget: then it must not parse
            continue
        finished += 1
        assert isinstance(json.loads(qwen_tok.decode(tokens)), dict)
    assert finished >= 5  # 10 of 20 with these seeds


def test_stop_tokens_are_exactly_what_remains(qwen, qwen_tok):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    matcher = qwen.start(constraint_for_json_schema(schema))
    ids = qwen_tok.encode('{"ok": true}')
    for token in ids[:-1]:
        assert matcher.allowed_mask()[token]
        matcher.advance(token)
        assert not matcher.is_finished  # a max_tokens cut here reports "length"
    matcher.advance(ids[-1])
    assert matcher.is_finished
    assert set(np.flatnonzero(matcher.allowed_mask())) == set(qwen.stop_token_ids)
    matcher.advance(qwen.stop_token_ids[0])
    assert matcher.is_finished


def test_apply_masks_shapes_dtypes_and_padding(qwen, qwen_tok):
    matcher = qwen.start(constraint_for_json_schema({"type": "string", "maxLength": 3}))
    allowed = matcher.allowed_mask()
    assert allowed.shape == (qwen.vocab_size,)
    assert not allowed[len(qwen_tok) :].any()  # padded rows
    logits = mx.random.normal((qwen.vocab_size,), key=mx.random.key(0)).astype(mx.bfloat16)
    for shaped in (logits, logits[None]):
        out = matcher.apply(shaped)
        assert out.shape == shaped.shape and out.dtype == mx.bfloat16
        flat = np.array(out.reshape(-1).astype(mx.float32))
        assert np.array_equal(np.isneginf(flat), ~allowed)
        kept = np.array(logits.astype(mx.float32))[allowed]
        assert np.array_equal(flat[allowed], kept)
    with pytest.raises(ValueError):
        matcher.apply(mx.zeros((1, qwen.vocab_size - 1)))


def test_logits_narrower_than_tokenizer(qwen_tok):
    narrow = ConstraintCompiler(qwen_tok, _stops(qwen_tok), vocab_size=len(qwen_tok) - 2)
    tokens, stop, _ = sample(narrow, constraint_for_json_schema(SCHEMAS["choice"]), 3)
    assert stop is not None
    jsonschema.validate(json.loads(qwen_tok.decode(tokens)), SCHEMAS["choice"])


def test_advance_refuses_disallowed_tokens(qwen, qwen_tok):
    matcher = qwen.start(constraint_for_json_schema({"type": "object"}))
    image_pad = qwen_tok.convert_tokens_to_ids("<|image_pad|>")
    with pytest.raises(ConstraintViolationError):
        matcher.advance(image_pad)
    with pytest.raises(ConstraintViolationError):
        matcher.advance(qwen.vocab_size - 1)  # a padded row
    matcher.apply(mx.zeros((1, qwen.vocab_size)))
    with pytest.raises(ConstraintViolationError):
        matcher.advance(qwen_tok.encode("]")[0])
    with pytest.raises(ConstraintViolationError):
        matcher.advance(qwen.stop_token_ids[0])  # nothing complete yet
    matcher.advance(qwen_tok.encode("{")[0])  # the refusals left the state untouched


def test_forced_tokens_fast_forward(qwen, qwen_tok):
    schema = {
        "type": "object",
        "properties": {"kind": {"const": "dog"}, "n": {"type": "integer"}},
        "required": ["kind", "n"],
        "additionalProperties": False,
    }
    matcher = qwen.start(constraint_for_json_schema(schema))
    fed: list[int] = []
    while forced := matcher.forced_tokens():
        for token in forced:
            matcher.advance(token)
        fed += forced
    # llguidance holds back bytes a longer token could still swallow (here the final '"').
    assert qwen_tok.decode(fed).startswith('{"kind": "dog')
    assert not matcher.is_finished
    rest = qwen_tok.decode(fed)
    tail = qwen_tok.encode('{"kind": "dog", "n": 5}'[len(rest) :])
    for token in tail:
        matcher.advance(token)
    assert matcher.is_finished and matcher.forced_tokens() == []


def test_compile_cache_hits_misses_and_eviction(qwen_tok):
    compiler = ConstraintCompiler(qwen_tok, _stops(qwen_tok), cache_size=2)
    a = constraint_for_json_schema({"type": "integer"})
    b = constraint_for_json_schema({"type": "boolean"})
    c = constraint_for_json_schema({"type": "null"})
    compiler.start(a)
    compiler.start(a)
    stats = compiler.stats()
    assert (stats["hits"], stats["misses"], stats["entries"]) == (1, 1, 1)
    assert stats["compile_seconds"] > 0
    compiler.start(b)
    compiler.start(c)  # evicts a, the least recently used
    compiler.start(a)
    stats = compiler.stats()
    assert (stats["hits"], stats["misses"], stats["entries"]) == (1, 4, 2)
    # A hand-built constraint that reuses a key must not get the other grammar.
    impostor = Constraint(grammar=b.grammar, key=a.key)
    matcher = compiler.start(impostor)
    assert matcher.allowed_mask()[qwen_tok.encode("true")[0]]
    assert compiler.stats()["misses"] == 5


def test_invalid_grammar_raises_named_error(qwen):
    with pytest.raises(InvalidConstraintError, match="grammar cannot be compiled"):
        qwen.start(Constraint(grammar="start: undefined_rule", key="bad"))
    with pytest.raises(InvalidConstraintError, match="no allowed token|cannot start"):
        qwen.start(Constraint(grammar="start: <|image_pad|>", key="image"))


def _tool_grammar() -> tuple[str, dict]:
    args = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 15},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
        },
        "required": ["city", "days"],
        "additionalProperties": False,
    }
    call = '"<tool_call>\\n{\\"name\\": \\"get_weather\\", \\"arguments\\": " ' + lark_json(args)
    return "start: " + call + ' "}\\n</tool_call>"', args


@pytest.mark.parametrize("family", ["qwen", "gemma"])
def test_tool_call_grammar_with_json_arguments(request, family):
    compiler = request.getfixturevalue(family)
    tok = request.getfixturevalue(f"{family}_tok")
    lark, args = _tool_grammar()
    constraint = constraint_for_grammar(lark, "tool_call")
    tool_call = tok.get_vocab().get("<tool_call>")
    for seed in range(20):
        tokens, stop, matcher = sample(compiler, constraint, seed)
        assert stop is not None and matcher.is_finished
        text = tok.decode(tokens)
        assert text.startswith("<tool_call>\n") and text.endswith("}\n</tool_call>")
        call = json.loads(text[len("<tool_call>\n") : -len("\n</tool_call>")])
        assert call["name"] == "get_weather"
        jsonschema.validate(call["arguments"], args)
        # Qwen2.5 has <tool_call> as one added token: the model must get to use it.
        assert (tokens[0] == tool_call) if tool_call is not None else len(tokens) > 1


def test_tool_choice_required_picks_one_of_several(qwen, qwen_tok):
    schema = {
        "type": "object",
        "properties": {"q": {"type": "string", "maxLength": 5}},
        "required": ["q"],
        "additionalProperties": False,
    }
    calls = [
        f'"{{\\"name\\": \\"{n}\\", \\"arguments\\": " {lark_json(schema)} "}}"' for n in ("a", "b")
    ]
    lark = "start: <tool_call>? body\nbody: " + " | ".join(calls)
    names = set()
    for seed in range(20):
        tokens, stop, _ = sample(qwen, constraint_for_grammar(lark), seed)
        assert stop is not None
        names.add(json.loads(qwen_tok.decode(tokens).removeprefix("<tool_call>"))["name"])
    assert names == {"a", "b"}
