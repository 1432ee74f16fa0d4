"""Locally trained tokenizers shaped like the real Gemma 3 and Qwen2-VL ones.

Each family keeps its real tokenizer *structure*, because transformers 5 rebuilds the pipeline
from the declared `tokenizer_class` and mlx-vlm picks its streaming detokenizer from the
`tokenizer.json` decoder:
- Gemma 3 (`GemmaTokenizer`): BPE over text whose spaces become "▁", with byte fallback
  (`<0x00>`..`<0xFF>`), so every byte is representable; SentencePiece-style decoder.
- Qwen2-VL / Qwen2.5-VL (`Qwen2Tokenizer`): byte-level BPE with Qwen2's split regex and NFC.
Only the merges are ours, learned from the bundled corpus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

# Qwen2's pre-tokenizer split, as in transformers' tokenization_qwen2.py.
QWEN_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Real Gemma 3 keeps pad/eos/bos/unk/mask at ids 0-4; the rest of ours follow directly.
GEMMA_SPECIAL = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "[multimodal]",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
)

# (token, special) in Qwen2.5-VL's order; the tool and FIM tokens are not "special" there.
QWEN_ADDED = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)


@dataclass(frozen=True)
class TrainedTokenizer:
    """A trained tokenizer and the id of every token a config or template refers to."""

    tokenizer: Tokenizer
    ids: dict[str, int]

    @property
    def size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)


def corpus_lines() -> list[str]:
    """The bundled training corpus, one string per line (newlines kept)."""
    text = resources.files(__package__).joinpath("corpus.txt").read_text(encoding="utf-8")
    return text.splitlines(keepends=True)


def _trained_bpe(tokenizer: Tokenizer, trainer: trainers.BpeTrainer) -> tuple[dict, list]:
    tokenizer.train_from_iterator(corpus_lines(), trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    return model["vocab"], model["merges"]


def train_gemma(vocab_size: int) -> TrainedTokenizer:
    """A Gemma 3-style tokenizer of exactly `vocab_size` tokens (a multiple of 64)."""
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    reserved = len(GEMMA_SPECIAL) + len(byte_tokens)
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    trainer_tok.normalizer = normalizers.Replace(" ", "▁")
    # Training splits before each "▁" like SentencePiece; the saved pipeline needs no split
    # because no learned merge crosses a "▁" boundary.
    trainer_tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - reserved, show_progress=False, special_tokens=[]
    )
    learned, merges = _trained_bpe(trainer_tok, trainer)
    pieces = list(GEMMA_SPECIAL) + byte_tokens
    pieces += [t for t, _ in sorted(learned.items(), key=lambda kv: kv[1]) if t not in pieces]
    # Like the real vocabulary, fill the remainder with unused placeholder tokens.
    if len(pieces) > vocab_size:
        raise RuntimeError(f"trainer returned {len(pieces)} tokens for vocab {vocab_size}")
    pieces += [f"<unused{i}>" for i in range(vocab_size - len(pieces))]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    bos = vocab["<bos>"]
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
    )
    specials = list(GEMMA_SPECIAL) + [p for p in pieces if p.startswith("<unused")]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return TrainedTokenizer(tok, {t: vocab[t] for t in GEMMA_SPECIAL})


def train_qwen(vocab_size: int) -> TrainedTokenizer:
    """A Qwen2-VL-style byte-level BPE tokenizer of exactly `vocab_size` tokens."""
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False, fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(QWEN_ADDED),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    learned = tok.get_vocab_size(with_added_tokens=False)
    if learned + len(QWEN_ADDED) != vocab_size:
        raise RuntimeError(f"corpus too small: learned {learned} tokens for vocab {vocab_size}")
    for token, special in QWEN_ADDED:
        added = AddedToken(token, special=special, normalized=False)
        if special:
            tok.add_special_tokens([added])
        else:
            tok.add_tokens([added])
    return TrainedTokenizer(tok, {t: tok.token_to_id(t) for t, _ in QWEN_ADDED})
