"""Time to first token of each turn of a 3-turn chat with SmolLM2, with the conversation's
KV cache reused (only the new message is prefilled) and without (the whole history is).
Both sessions run interleaved, turn by turn, REPEATS times; medians are printed.
Usage, from the repository root:
    OMP_NUM_THREADS=2 PYTHONPATH=. .venv/bin/python bench/chat_ttft.py [MAX_NEW_TOKENS] [REPEATS]"""

import statistics
import sys

import torch

from minila.cli.chat import ChatSession
from minila.llama.checkpoint import load_checkpoint
from minila.lookahead.loop import LookaheadConfig, lookahead_generate

QUESTIONS = [
    "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences.",
    "Rewrite your previous response. Start every sentence with the letter A.",
    "Now summarise it in three bullet points.",
]
max_new = int(sys.argv[1]) if len(sys.argv) > 1 else 128
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
torch.set_num_threads(2)
model, tok = load_checkpoint("weights/smollm2-135m-instruct", device="cpu")
config = LookaheadConfig(window=1, ngram=5, guess=5, copy=10)  # what auto picks on this CPU


def decode(model, ids, k, eos, on_tokens, cache):
    return lookahead_generate(model, ids, k, config, eos, on_tokens, cache=cache)


lookahead_generate(model, tok.encode("Hello there"), 8, config)  # warm-up
ttft = {True: [[] for _ in QUESTIONS], False: [[] for _ in QUESTIONS]}
for _ in range(repeats):
    sessions = {reuse: ChatSession(model, tok, decode, max_new, config.step_tokens, reuse_cache=reuse)
                for reuse in (True, False)}  # fmt: skip
    for i, question in enumerate(QUESTIONS):
        turns = {reuse: s.ask(question) for reuse, s in sessions.items()}
        for reuse, turn in turns.items():
            ttft[reuse][i].append(turn.first_token_seconds)
        same = turns[True].tokens == turns[False].tokens
        print(f"turn {i + 1}: prompt {turns[True].prompt_tokens} tokens, {turns[True].reused} from the cache; "
              f"first token {1000 * turns[True].first_token_seconds:.0f} ms reused vs "
              f"{1000 * turns[False].first_token_seconds:.0f} ms from scratch; same answer: {same}", flush=True)  # fmt: skip
for i in range(len(QUESTIONS)):
    a, b = statistics.median(ttft[True][i]), statistics.median(ttft[False][i])
    print(f"median time to first token, turn {i + 1}: {1000 * a:.0f} ms with the reused cache, "
          f"{1000 * b:.0f} ms without ({b / a:.1f}x)")  # fmt: skip
