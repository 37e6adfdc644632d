"""Llama 3.x checkpoints against transformers: scaled RoPE (llama3, linear) read from both
spellings of config.json, several EOS ids, and Llama 3.2's own chat template.

The checkpoints are tiny random Llamas saved by transformers (conftest.write_tiny_llama3)
whose pretraining context (64) is shorter than the prompts fed here (160 tokens), so
every band of the llama3 rule is in use and a model that ignored the scaling would
give other logits (checked too).
"""

from __future__ import annotations

from datetime import datetime

import pytest
import torch
from conftest import LLAMA3_ROPE, LLAMA3_SPECIALS, write_tiny_llama3

from minila import LookaheadConfig, MinilaError, greedy_generate, load_checkpoint, lookahead_generate
from minila.llama.model import rope_tables
from minila.llama.rope import RopeScaling, inv_frequencies
from minila.llama.tokenizer import Tokenizer

LINEAR_ROPE = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}


@pytest.mark.parametrize(
    "rope, spelling",
    [(LLAMA3_ROPE, "transformers5"), (LLAMA3_ROPE, "transformers4"), (LINEAR_ROPE, "transformers4")],
    ids=["llama3-rope_parameters", "llama3-rope_scaling", "linear-rope_scaling"],
)
def test_scaled_rope_checkpoint_equals_transformers(tmp_path, llama3_tokenizer_json, rope, spelling):
    from transformers import LlamaForCausalLM

    folder = tmp_path / "ckpt"
    write_tiny_llama3(folder, llama3_tokenizer_json, rope, spelling=spelling)
    assert ("rope_scaling" in (folder / "config.json").read_text()) is (spelling == "transformers4")
    hf = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert hf.config.rope_parameters["rope_type"] == rope["rope_type"]  # the oracle does scale
    model, tok = load_checkpoint(folder, device="cpu")
    scaling = model.args.rope_scaling
    assert scaling.kind == rope["rope_type"] and scaling.factor == rope["factor"]
    assert model.args.rope_theta == rope["rope_theta"]
    assert torch.equal(inv_frequencies(16, model.args.rope_theta, scaling), hf.model.rotary_emb.inv_freq)

    ids = torch.randint(len(LLAMA3_SPECIALS), 400, (160,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0]  # (T, vocab)
        ours = model(torch.tensor(ids), torch.arange(len(ids)), model.new_cache(len(ids)))
        assert (ours - theirs).abs().max() < 1e-5 * theirs.abs().max()  # float32 rounding
        # without the scaling the same weights give other logits: the scaling is exercised
        cos, sin = model.rope_cos, model.rope_sin
        model.rope_cos, model.rope_sin = rope_tables(16, model.args.max_seq_len, model.args.rope_theta)
        plain = model(torch.tensor(ids), torch.arange(len(ids)), model.new_cache(len(ids)))
        model.rope_cos, model.rope_sin = cos, sin
    assert (plain - theirs).abs().max() > 0.1 * theirs.abs().max()

    prompt, k = ids[:120], 60  # decoding runs past the pretraining context from its start
    expected = hf.generate(torch.tensor([prompt]), max_new_tokens=k, do_sample=False, pad_token_id=0)[0, 120:]
    greedy = greedy_generate(model, prompt, k, tok.eos_ids)
    assert greedy.tokens == expected.tolist()
    look = lookahead_generate(model, prompt, k, LookaheadConfig(window=3, ngram=3, guess=3, copy=4), tok.eos_ids)
    assert look.tokens == greedy.tokens


def test_rope_scaling_is_validated():
    for bad in (dict(kind="yarn", factor=2.0), dict(kind="linear", factor=0.0),
                dict(kind="llama3", factor=8.0, low_freq_factor=4.0, high_freq_factor=1.0)):  # fmt: skip
        with pytest.raises(ValueError):
            RopeScaling(**bad)
    # the fast band is left alone, the slow band divided by the factor
    f = inv_frequencies(16, 500000.0, None)
    g = inv_frequencies(16, 500000.0, RopeScaling("llama3", 8.0, 1.0, 4.0, 64))
    assert g[0] == f[0] and torch.equal(g[3:], f[3:] / 8.0) and f[1] / 8 < g[1] < f[1]


CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "  Answer in French.  "}, {"role": "user", "content": "Hello 東京 😀"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "the quick brown fox"},
        {"role": "assistant", "content": "jumps over the lazy dog"},
        {"role": "user", "content": "and then? 123"},
    ],
]


def test_llama3_tokenizer_and_chat_template_equal_transformers(tmp_path, llama3_tokenizer_json):
    from transformers import AutoTokenizer

    folder = tmp_path / "ckpt"
    write_tiny_llama3(folder, llama3_tokenizer_json, LLAMA3_ROPE)
    tok, hf_tok = Tokenizer.from_folder(folder), AutoTokenizer.from_pretrained(folder)
    ids = {t: LLAMA3_SPECIALS.index(t) for t in LLAMA3_SPECIALS}
    # the configs list end-of-text, end-of-message and end-of-turn: all of them stop decoding
    assert tok.eos_ids == [ids["<|end_of_text|>"], ids["<|eom_id|>"], ids["<|eot_id|>"]]
    assert tok.bos_id == ids["<|begin_of_text|>"]
    assert tok.encode("hello world") == hf_tok("hello world")["input_ids"]  # the post-processor's BOS
    for messages in CONVERSATIONS:
        for prompt in (True, False):
            text = hf_tok.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=False)
            assert tok.render_chat(messages, prompt) == text
            theirs = hf_tok.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=True)
            theirs = theirs["input_ids"] if hasattr(theirs, "keys") else theirs
            ours = tok.apply_chat_template(messages, prompt)
            assert ours == list(theirs) and ours.count(ids["<|begin_of_text|>"]) == 1
    text = tok.render_chat(CONVERSATIONS[0])
    assert f"Today Date: {datetime.now().strftime('%d %b %Y')}\n" in text  # strftime_now
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    calls = [{"function": {"name": "f", "arguments": {}}}] * 2
    with pytest.raises(MinilaError, match="only supports single tool-calls"):  # raise_exception
        tok.render_chat([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": calls}])


def test_every_eos_id_of_the_configs_stops_decoding(tmp_path, llama3_tokenizer_json):
    import json

    from transformers import LlamaForCausalLM

    folder = tmp_path / "ckpt"
    write_tiny_llama3(folder, llama3_tokenizer_json, LLAMA3_ROPE)
    model, _ = load_checkpoint(folder, device="cpu")
    prompt = torch.randint(len(LLAMA3_SPECIALS), 400, (80,), generator=torch.Generator().manual_seed(1)).tolist()
    free = greedy_generate(model, prompt, 30).tokens  # no EOS: where would each token stop it?
    stop = next(t for i, t in enumerate(free) if i >= 8 and t not in free[:i])
    # generation_config.json names it after two others; config.json names one more
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 4, stop]}))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "eos_token_id": [5, 1]}))
    model, tok = load_checkpoint(folder, device="cpu")
    assert tok.eos_ids == [1, 4, stop, 5]
    expected = free[: free.index(stop) + 1]
    hf = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=30, do_sample=False, pad_token_id=0)[0, 80:]
    assert theirs.tolist() == expected  # transformers stops there too
    for gen in (greedy_generate(model, prompt, 30, tok.eos_ids),
                lookahead_generate(model, prompt, 30, LookaheadConfig(window=3, ngram=3, guess=3, copy=4), tok.eos_ids)):  # fmt: skip
        assert gen.tokens == expected and gen.stop_reason == "eos"
