"""A byte-level BPE encoder written out in plain Python: the test oracle for the qwen2
tokenizer that minila's converter rebuilds with the `tokenizers` library.

It follows the published recipe (GPT-2's encoder, with Qwen2's split rule) step by step,
sharing no code with `tokenizers`: cut out the special tokens; NFC-normalise the rest;
split it with the regex; map each piece's UTF-8 bytes to GPT-2's printable characters;
merge the adjacent pair of lowest merge rank until none is left; look the symbols up.
Slow (a Python loop per merge), so it is for short texts.
"""

from __future__ import annotations

import unicodedata

import regex

from minila.llama.convert import QWEN2_SPLIT


def byte_to_char() -> dict[int, str]:
    """GPT-2's reversible map of the 256 bytes to printable characters: printable
    Latin-1 bytes stand for themselves, the others take the characters from U+0100 on."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


class ReferenceBPE:
    def __init__(self, vocab: dict[str, int], merges: list[str], specials: list[str]) -> None:
        self.vocab = vocab
        self.ranks = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
        self.specials = sorted(specials, key=len, reverse=True)  # longest first
        self.split = regex.compile(QWEN2_SPLIT)
        self.chars = byte_to_char()

    def _word(self, piece: str) -> list[int]:
        symbols = [self.chars[b] for b in piece.encode("utf-8")]
        while len(symbols) > 1:
            pairs = [(self.ranks.get(p, len(self.ranks)), i) for i, p in enumerate(zip(symbols, symbols[1:]))]
            rank, i = min(pairs)
            if rank == len(self.ranks):
                break
            symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
        return [self.vocab[s] for s in symbols]

    def _text(self, text: str) -> list[int]:
        text = unicodedata.normalize("NFC", text)
        return [i for piece in self.split.findall(text) for i in self._word(piece)]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        start = i = 0
        while i < len(text):
            hit = next((s for s in self.specials if text.startswith(s, i)), None)
            if hit is None:
                i += 1
                continue
            ids += self._text(text[start:i]) + [self.vocab[hit]]
            i = start = i + len(hit)
        return ids + self._text(text[start:])
