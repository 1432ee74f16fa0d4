"""Measure constrained-decoding costs: compile, per-token mask, mask application, decode ratio.

    python scripts/bench_constraints.py                 # small (4k) and large (~150k) vocab
    python scripts/bench_constraints.py --tokenizer DIR # also a real local HF tokenizer dir

No model is loaded: the tokenizers are trained here on generated text (byte-level BPE, digits
split one by one as in Qwen and Gemma) and cached in the temp dir; the "model" of the decode
comparison is a chain of matmuls tuned to a fixed step time, so the ratio isolates the
constraint overhead. Prints one line per figure; `--json` prints them as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlx_server.engine.constraints import ConstraintCompiler, constraint_for_json_schema  # noqa: E402

SCHEMA = {  # a typical annotation schema: 8 fields, nested object, enum, array, nullable
    "type": "object",
    "properties": {
        "caption": {"type": "string", "maxLength": 200},
        "category": {"enum": ["person", "animal", "vehicle", "building", "food", "other"]},
        "count": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 8},
        "bbox": {
            "type": "object",
            "properties": {k: {"type": "number"} for k in "xywh"},
            "required": list("xywh"),
            "additionalProperties": False,
        },
        "is_outdoor": {"type": "boolean"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "notes": {"type": ["string", "null"]},
    },
    "required": [
        "caption",
        "category",
        "count",
        "tags",
        "bbox",
        "is_outdoor",
        "confidence",
        "notes",
    ],
    "additionalProperties": False,
}
ANSWER = {
    "caption": "A brown dog runs across a grassy field next to an old red barn",
    "category": "animal",
    "count": 1,
    "tags": ["dog", "field", "barn", "outdoor", "running"],
    "bbox": {"x": 0.12, "y": 0.3, "w": 0.5, "h": 0.41},
    "is_outdoor": True,
    "confidence": 0.93,
    "notes": None,
}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|vision_start|>"]
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "with",
    "on",
    "image",
    "photo",
    "dog",
    "red",
    "label",
    "name",
    "value",
]


def build_tokenizer(vocab: int, cache: Path):
    """Train (once, then cached) a byte-level BPE tokenizer of about `vocab` tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    path = cache / f"bpe-{vocab}"
    if not (path / "tokenizer.json").exists():
        rng = random.Random(vocab)
        syllables = [
            c + v for c in "bcdfghklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")
        ]
        lexicon = WORDS + [
            "".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(vocab * 2)
        ]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(False)]
        )
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab,
            special_tokens=SPECIALS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(_corpus(rng, lexicon, vocab * 3), trainer=trainer)
        PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(
            path
        )
    return PreTrainedTokenizerFast.from_pretrained(path)


def _corpus(rng: random.Random, lexicon: list[str], lines: int):
    for _ in range(lines):
        if rng.random() < 0.6:
            yield " ".join(rng.choices(lexicon, k=rng.randint(3, 15))) + "."
        elif rng.random() < 0.85:
            keys = rng.choices(lexicon, k=3)
            yield json.dumps(
                {k: rng.choice([rng.random(), True, None, rng.choice(lexicon)]) for k in keys}
            )
        else:
            yield "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(rng.randint(2, 10)))


def _ms(values) -> dict[str, float]:
    arr = np.asarray(values) * 1e3
    return {
        "mean": float(arr.mean()),
        "p50": float(np.median(arr)),
        "p99": float(np.percentile(arr, 99)),
    }


def bench_tokenizer(name: str, tokenizer) -> dict:
    """Compile and per-token figures for one tokenizer (logits padded as in real checkpoints)."""
    stops = _stop_ids(tokenizer)
    vocab = ((len(tokenizer) + 255) // 256) * 256
    started = time.perf_counter()
    compiler = ConstraintCompiler(tokenizer, stops, vocab_size=vocab)
    out = {"tokenizer": name, "vocab": vocab, "wrap_tokenizer_s": time.perf_counter() - started}
    constraint = constraint_for_json_schema(SCHEMA)
    started = time.perf_counter()
    compiler.start(constraint)
    out["compile_ms"] = (time.perf_counter() - started) * 1e3
    started = time.perf_counter()
    matcher = compiler.start(constraint)
    out["cached_start_ms"] = (time.perf_counter() - started) * 1e3

    ids = tokenizer.encode(json.dumps(ANSWER, separators=(", ", ": ")), add_special_tokens=False)
    logits = mx.random.normal((1, vocab), key=mx.random.key(0))
    mx.eval(logits)
    mask_t, apply_t, advance_t = [], [], []
    for token in [*ids, stops[0]]:
        t0 = time.perf_counter()
        matcher.allowed_mask()
        t1 = time.perf_counter()
        mx.eval(matcher.apply(logits))  # mask cached: this is unpack + mx.where
        t2 = time.perf_counter()
        matcher.advance(token)
        t3 = time.perf_counter()
        mask_t.append(t1 - t0)
        apply_t.append(t2 - t1)
        advance_t.append(t3 - t2)
    out["answer_tokens"] = len(ids)
    out["mask_ms"], out["apply_ms"], out["advance_ms"] = _ms(mask_t), _ms(apply_t), _ms(advance_t)
    out["apply_alternatives_ms"] = bench_apply_variants(vocab)
    return out


def bench_apply_variants(vocab: int, reps: int = 100) -> dict[str, float]:
    """Ways to turn llguidance's packed bitmask into masked logits (median ms, half allowed)."""
    rng = np.random.default_rng(0)
    words = rng.integers(-(2**31), 2**31, (vocab + 31) // 32, dtype=np.int64).astype(np.int32)
    logits = mx.random.normal((1, vocab), key=mx.random.key(1))
    shift = mx.arange(vocab, dtype=mx.uint32) % 32
    word_of = mx.arange(vocab) // 32

    def unpack():
        return np.unpackbits(words.view(np.uint8), count=vocab, bitorder="little").view(np.bool_)

    variants = {
        "numpy_unpack+mx.where (used)": lambda: mx.where(mx.array(unpack()), logits, -mx.inf),
        "numpy_unpack+additive_bias": lambda: (
            logits + mx.array(np.where(unpack(), np.float32(0), np.float32(-np.inf)))
        ),
        "mlx_gather_shift+mx.where": lambda: mx.where(
            (mx.right_shift(mx.array(words.view(np.uint32))[word_of], shift) & 1).astype(mx.bool_),
            logits,
            -mx.inf,
        ),
        "sparse_scatter": lambda: _scatter(logits, unpack()),
    }
    figures = {}
    for label, fn in variants.items():
        mx.eval(fn())
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            mx.eval(fn())
            times.append(time.perf_counter() - t0)
        figures[label] = float(np.median(times) * 1e3)
    return figures


def _scatter(logits: mx.array, allowed: np.ndarray) -> mx.array:
    idx = mx.array(np.flatnonzero(allowed).astype(np.int32))
    out = mx.full(logits.shape, -mx.inf, dtype=logits.dtype)
    out[:, idx] = logits[:, idx]
    return out


def _stop_ids(tokenizer) -> list[int]:
    vocab = tokenizer.get_vocab()
    names = ("<|im_end|>", "<end_of_turn>", "<|endoftext|>", "<eos>")
    return [vocab[n] for n in names if n in vocab] or [tokenizer.eos_token_id]


def bench_decode(tokenizer, step_ms: float, tokens: int = 40) -> dict:
    """Unconstrained vs constrained tokens/s with a synthetic model step of about `step_ms`."""
    stops = _stop_ids(tokenizer)
    vocab = ((len(tokenizer) + 255) // 256) * 256
    compiler = ConstraintCompiler(tokenizer, stops, vocab_size=vocab)
    constraint = constraint_for_json_schema(SCHEMA)
    dim = 256
    keys = mx.random.split(mx.random.key(2), 3)
    head = mx.random.normal((dim, vocab), key=keys[0]) * 0.2
    square = mx.random.normal((4 * dim, 4 * dim), key=keys[1]) * 0.03
    embed = mx.random.normal((vocab, dim), key=keys[2])
    mx.eval(head, square, embed)
    depth = 0

    def step(token: int) -> mx.array:
        x = mx.tile(embed[token][None], (1, 4))
        for _ in range(depth):
            x = mx.tanh(x @ square)
        return x[:, :dim] @ head

    host = [0.0]  # seconds spent in matcher calls (mask, graph building, advance)

    def run(constrained: bool, n: int) -> float:
        token, matcher = stops[0], compiler.start(constraint)
        t0 = time.perf_counter()
        for _ in range(n):
            logits = step(token)
            if constrained:
                t1 = time.perf_counter()
                logits = matcher.apply(logits)
                host[0] += time.perf_counter() - t1
            token = int(mx.random.categorical(logits).item())
            if constrained:
                t1 = time.perf_counter()
                matcher.advance(token)
                if matcher.is_finished:
                    matcher = compiler.start(constraint)  # keep decoding fresh answers
                host[0] += time.perf_counter() - t1
        return n / (time.perf_counter() - t0)

    base_ms = 1e3 / run(False, 10)
    x = mx.ones((1, 4 * dim))
    t0 = time.perf_counter()
    for _ in range(50):
        x = mx.tanh(x @ square)
        mx.eval(x)
    layer_ms = (time.perf_counter() - t0) * 1e3 / 50
    depth = min(2000, max(0, round((step_ms - base_ms) / layer_ms)))
    run(True, 10)  # warm-up of the constrained path
    host[0] = 0.0
    rounds = [(run(False, tokens), run(True, tokens)) for _ in range(5)]  # alternate: CPU noise
    free = float(np.median([r[0] for r in rounds]))
    constrained = float(np.median([r[1] for r in rounds]))
    return {
        "step_ms_target": step_ms,
        "step_ms_measured": 1e3 / free,
        "free_tok_s": free,
        "constrained_tok_s": constrained,
        "ratio": constrained / free,
        "overhead_ms_per_token": 1e3 / constrained - 1e3 / free,
        "matcher_ms_per_token": host[0] * 1e3 / (5 * tokens),
    }


def bench_outlines(tokenizer) -> dict | None:
    """The alternative we measured against, when outlines-core happens to be installed."""
    try:
        from outlines_core import Guide, Index, Vocabulary
        from outlines_core.json_schema import build_regex_from_schema
    except ImportError:
        return None
    byte_of = _bytelevel_decoder()
    added = set(tokenizer.added_tokens_decoder)
    table: dict[bytes, list[int]] = {}
    for text, tid in tokenizer.get_vocab().items():
        if tid not in added:
            table.setdefault(bytes(byte_of[c] for c in text), []).append(tid)
    vocabulary = Vocabulary(tokenizer.eos_token_id, table)
    t0 = time.perf_counter()
    index = Index(build_regex_from_schema(json.dumps(SCHEMA), None), vocabulary)
    compile_s = time.perf_counter() - t0
    guide = Guide(index)
    words = np.zeros((len(tokenizer) + 31) // 32, dtype=np.int32)
    times = []
    for token in tokenizer.encode(json.dumps(ANSWER, separators=(",", ":"))):
        t0 = time.perf_counter()
        guide.write_mask_into(words.ctypes.data, words.size, 4)
        times.append(time.perf_counter() - t0)
        guide.advance(token)
    return {"compile_s": compile_s, "mask_ms": _ms(times)}


def _bytelevel_decoder() -> dict[str, int]:
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, help="a local HF tokenizer directory to add")
    parser.add_argument("--large-vocab", type=int, default=150_000)
    parser.add_argument("--step-ms", type=float, nargs="*", default=[20.0, 40.0])
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "mlx_server_bench"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tokenizers = {"small": build_tokenizer(4_000, args.cache)}
    tokenizers["large"] = build_tokenizer(args.large_vocab, args.cache)
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizers[str(args.tokenizer)] = AutoTokenizer.from_pretrained(args.tokenizer)
    report = {"device": str(mx.default_device()), "runs": []}
    for name, tok in tokenizers.items():
        figures = bench_tokenizer(name, tok)
        figures["outlines_core"] = bench_outlines(tok) if name != str(args.tokenizer) else None
        report["runs"].append(figures)
        _print_run(figures)
    report["decode"] = [bench_decode(tokenizers["large"], ms) for ms in args.step_ms]
    for d in report["decode"]:
        print(
            f"decode @{d['step_ms_measured']:.1f} ms/step, large vocab: free {d['free_tok_s']:.1f} tok/s, "
            f"json_schema {d['constrained_tok_s']:.1f} tok/s, ratio {d['ratio']:.3f} "
            f"({d['overhead_ms_per_token']:+.2f} ms/token wall; matcher calls "
            f"{d['matcher_ms_per_token']:.3f} ms/token)"
        )
    if args.json:
        print(json.dumps(report, indent=2))


def _print_run(f: dict) -> None:
    print(
        f"[{f['tokenizer']}] vocab {f['vocab']}: wrap tokenizer {f['wrap_tokenizer_s']:.2f} s, "
        f"compile annotation schema {f['compile_ms']:.2f} ms, cached start {f['cached_start_ms']:.3f} ms"
    )
    for key in ("mask_ms", "apply_ms", "advance_ms"):
        m = f[key]
        print(
            f"  {key[:-3]:8} per token over {f['answer_tokens']} tokens: mean {m['mean']:.3f} ms, "
            f"p50 {m['p50']:.3f}, p99 {m['p99']:.3f}"
        )
    for label, ms in f["apply_alternatives_ms"].items():
        print(f"  apply variant {label}: {ms:.3f} ms")
    if f.get("outlines_core"):
        o = f["outlines_core"]
        print(
            f"  outlines-core: compile {o['compile_s']:.2f} s, mask mean {o['mask_ms']['mean']:.3f} ms"
        )


if __name__ == "__main__":
    main()
