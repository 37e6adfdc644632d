"""The real Qwen2.5-Coder-0.5B-Instruct (converted from its Q4_K_M GGUF) against transformers.

Runs only where `make weights MODEL=qwen2.5-coder-0.5b` has written the folder; each test
is small (3 prompts, 64 tokens). transformers' Qwen2ForCausalLM loads the same folder.
"""

from __future__ import annotations

import json

import pytest
import torch
from reference_bpe import ReferenceBPE

from minila.decoding.greedy import greedy_generate
from minila.lookahead.loop import LookaheadConfig, lookahead_generate

pytestmark = [pytest.mark.qwen2_model, pytest.mark.slow]

CHATS = [
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain in two sentences what a hash map is.",
]
CODE = 'def sum_of_squares(numbers: list[int]) -> int:\n    """Return the sum of the squares of the numbers."""\n'
MIXED = [
    "def f(x):\n    return x ** 2  # 平方", "  \n\n\t2024-12-04 12345 café", "It's <|im_start|>user\nhi<|im_end|>",
    "for (int i = 0; i < n; ++i) {\n        sum += a[i];\n}", "你好，世界！ 🙂 e\u0301",
]  # fmt: skip


@pytest.fixture(scope="module")
def qwen2_real(qwen2_dir):
    from minila.llama.checkpoint import load_checkpoint

    return load_checkpoint(qwen2_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def prompts(qwen2_real):
    _, tok = qwen2_real
    chats = [tok.apply_chat_template([{"role": "user", "content": c}]) for c in CHATS]
    return [*chats, tok.encode(CODE)]


@pytest.fixture(scope="module")
def hf_greedy(qwen2_dir, prompts):
    """transformers' greedy continuation of each prompt, 64 tokens (its EOS ignored, as ours)."""
    from transformers import Qwen2ForCausalLM

    hf = Qwen2ForCausalLM.from_pretrained(qwen2_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = [hf.generate(torch.tensor([p]), max_new_tokens=64, do_sample=False, eos_token_id=None,
                           pad_token_id=0)[0, len(p):].tolist() for p in prompts]  # fmt: skip
    del hf
    return out


def test_folder_facts(qwen2_dir):
    config = json.loads((qwen2_dir / "config.json").read_text())
    facts = {"model_type": "qwen2", "num_hidden_layers": 24, "hidden_size": 896, "intermediate_size": 4864,
             "num_attention_heads": 14, "num_key_value_heads": 2, "rope_theta": 1e6, "vocab_size": 151936,
             "tie_word_embeddings": False, "eos_token_id": 151645}  # fmt: skip
    assert {k: config[k] for k in facts} == facts


def test_tokenizer_equals_reference_bpe(qwen2_real, qwen2_dir):
    _, tok = qwen2_real
    spec = json.loads((qwen2_dir / "tokenizer.json").read_text())
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
    reference = ReferenceBPE(spec["model"]["vocab"], merges, [t["content"] for t in spec["added_tokens"]])
    for text in MIXED:
        assert tok.encode(text) == reference.encode(text), text
    assert tok.encode("<|im_end|>") == [151645] and 151645 in tok.eos_ids


def test_chat_template_equals_transformers(qwen2_real, qwen2_dir):
    from transformers import AutoTokenizer

    _, tok = qwen2_real
    hf = AutoTokenizer.from_pretrained(qwen2_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": CHATS[0]}]
    for m in (messages, messages[1:]):  # with and without a system prompt (Qwen's default one)
        theirs = hf.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        assert tok.apply_chat_template(m) == list(theirs)


def test_greedy_equals_transformers(qwen2_real, prompts, hf_greedy):
    model, _ = qwen2_real
    for prompt, theirs in zip(prompts, hf_greedy):
        assert greedy_generate(model, prompt, 64).tokens == theirs


def test_lookahead_equals_greedy(qwen2_real, prompts, hf_greedy):
    """On the code request and the completion (a full window costs 2-3 greedy steps here)."""
    model, _ = qwen2_real
    config = LookaheadConfig(window=3, ngram=3, guess=3, copy=8)
    for prompt, theirs in zip(prompts[::2], hf_greedy[::2]):
        assert lookahead_generate(model, prompt, 64, config).tokens == theirs
