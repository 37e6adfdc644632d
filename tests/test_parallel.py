"""Lookahead parallelism: the cut is exact (each rank's rows see what they would see in one
process), the parallel decoder emits greedy's tokens in single-process lookahead's number
of steps, over simulated ranks and over a real 2-rank gloo group, and bad launches end
with one line and exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scripted import ScriptedModel, context_hash, periodic
from test_lookahead import configs, requests

from minila import LookaheadConfig, greedy_generate, lookahead_generate
from minila.cli.generate import main
from minila.lookahead.layout import candidate_tree, step_layout
from minila.parallel.decoder import Payload, RankDecoder, lockstep_generate
from minila.parallel.layout import assign_candidates, cut_columns, nominal_rank_widths, rank_cost, rank_layout

# ------------------------------------------------------------------------- the cut (pure)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(1, 6), st.data())
def test_cut_columns_covers_the_window_and_beats_an_even_split(window, levels, data):
    ranks = data.draw(st.integers(1, window))
    chunks = cut_columns(window, levels, ranks)
    assert [c for chunk in chunks for c in chunk] == list(range(window))  # contiguous, in rank order
    assert all(len(chunk) >= 1 for chunk in chunks)
    even = [range(r * window // ranks, (r + 1) * window // ranks) for r in range(ranks)]
    widest = max(rank_cost(c.start, c.stop, levels) for c in chunks)
    assert widest <= max(rank_cost(c.start, c.stop, levels) for c in even)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 12), max_size=16), st.lists(st.integers(0, 30), min_size=1, max_size=5))
def test_assign_candidates_gives_each_to_one_rank_the_narrowest(lengths, base):
    shares = assign_candidates(lengths, base)
    assert sorted(j for share in shares for j in share) == list(range(len(lengths)))
    loads = [b + sum(lengths[j] for j in share) for b, share in zip(base, shares)]
    # greedy least-loaded: no rank exceeds the lightest by more than the longest candidate
    assert max(loads) - min(loads) <= max([*lengths, max(base) - min(base)], default=0)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 7), st.integers(1, 4), st.integers(0, 4),
    st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=4), max_size=5), st.data(),
)  # fmt: skip
def test_a_rank_sees_exactly_what_one_process_sees(window, levels, refeed, candidates, data):
    """Label every window cell and candidate node with a unique token; then every row a
    rank feeds must sit at the same position and see the same tokens as the row with
    that token in the single-process layout, plus every re-fed token before `last`."""
    ranks = data.draw(st.integers(1, window))
    rank = data.draw(st.integers(0, ranks - 1))
    columns = cut_columns(window, levels, ranks)[rank]
    tree = candidate_tree(candidates)
    labels = [[100 + 10 * level + c for c in range(window)] for level in range(levels)]
    levels_tokens = [labels[0][1:]] + labels[1:]
    nodes = [1000 + i for i in range(len(tree.tokens))]
    full = step_layout(window, levels, tree.parents)
    full_tokens = full.pack(0, levels_tokens, nodes)
    refed = [-1 - i for i in range(refeed)]  # the accepted tokens fed again
    mine = rank_layout(columns, levels, refeed, tree.parents)
    tokens = mine.pack(refed, 0, levels_tokens, nodes)

    def view(mask, depth, toks, row, shift):
        return {(toks[j], int(depth[j]) - shift) for j in range(len(toks)) if mask[row, j]}

    for i, tok in enumerate(tokens[refeed:], start=refeed):
        j = full_tokens.index(tok)
        seen = view(mine.mask, mine.depth, tokens, i, refeed)
        prefix = {(t, k - refeed) for k, t in enumerate(refed)}
        assert seen == view(full.mask, full.depth, full_tokens, j, 0) | prefix
    # its own columns' top level and its candidates are where the logits say
    rows = mine.logit_rows.tolist()
    assert rows[0] == mine.last_row
    top = [tokens[r] for r in rows[mine.top]]
    assert top == [0 if levels == 1 and c == 0 else labels[levels - 1][c] for c in columns]
    assert [tokens[r] for r in rows[mine.first_node_logit :]] == nodes


def test_payload_round_trip():
    p = Payload(verdict_len=4, chunk=3)
    row = p.pack(width=17, tokens=[5, 6], winner=2, fresh=[7, 8])
    assert len(row) == p.size and p.unpack(row) == (17, 1, 2, [5, 6], [7, 8])
    assert p.unpack(p.pack(9, [5], None, [1, 2, 3]))[1:3] == (0, -1)


# ------------------------------------------------------------------------- simulated ranks


@st.composite
def tiny_models(draw):
    vocab = draw(st.sampled_from([8, 16, 64]))
    n_heads, n_kv_heads = draw(st.sampled_from([(4, 2), (2, 1), (3, 1)]))
    shape = dict(vocab=vocab, dim=8 * n_heads, n_heads=n_heads, n_kv_heads=n_kv_heads,
                 n_layers=draw(st.integers(1, 2)), max_seq_len=160)  # fmt: skip
    spec = ("tiny", draw(st.integers(0, 10_000)), shape, draw(st.sampled_from([1.0, 4.0])))
    return spec


def built(spec):
    from rank_pool import build_model

    return build_model(spec)


@pytest.mark.slow
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(tiny_models(), configs, st.data())
def test_lockstep_ranks_equal_greedy_in_the_same_steps(spec, config, data):
    model = built(spec)
    prompt, max_new, eos = data.draw(requests(model.args.vocab_size))
    ranks = data.draw(st.integers(1, min(config.window, 4)))
    greedy = greedy_generate(model, prompt, max_new, eos)
    single = lookahead_generate(model, prompt, max_new, config, eos)
    for gen in lockstep_generate(model, prompt, max_new, config, ranks, eos):
        assert gen.tokens == greedy.tokens and gen.stop_reason == greedy.stop_reason
        assert gen.steps == single.steps  # the split changes where work runs, not what is computed
        assert [s.candidate for s in gen.stats] == [s.candidate for s in single.stats]  # the same winners
        assert all(max(w) <= config.step_tokens + max(config.ngram - 1, config.copy) for w in gen.rank_widths)


@settings(max_examples=40, deadline=None)
@given(configs, st.integers(2, 5), st.data())
def test_every_row_sees_one_history_and_caches_stay_consistent(config, vocab, data):
    """ScriptedModel raises if any row sees a broken history (a wrong cut, position or
    re-feed); after every step each rank's cache + its tokens to re-feed must be the
    accepted text but its newest token."""
    model = ScriptedModel(vocab, context_hash(vocab))
    prompt = data.draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=12))
    max_new = data.draw(st.integers(1, 40))
    ranks = data.draw(st.integers(1, min(config.window, 3)))
    decoders = [RankDecoder(model, prompt, max_new, config, [], r, ranks) for r in range(ranks)]
    with torch.inference_mode():
        while not decoders[0].done:
            gathered = torch.stack([d.forward() for d in decoders]).tolist()
            for d in decoders:
                d.finish(gathered)
                assert model.committed_tokens(d.cache) + d.refed == d.context[:-1]
    assert decoders[0].gen.tokens == greedy_generate(model, prompt, max_new).tokens


def test_periodic_text_splits_and_still_takes_n_tokens_a_step():
    """A full match on any rank yields N tokens (N-1 and the bonus), and each rank
    feeds fewer rows than one process does."""
    model = ScriptedModel(12, periodic(period=12))
    config = LookaheadConfig(window=6, ngram=4, guess=3, pool_from_prompt=False, pool_from_output=False)
    single = lookahead_generate(model, [0], 200, config)
    gens = lockstep_generate(model, [0], 200, config, ranks=3)
    assert gens[0].tokens == single.tokens and gens[0].steps == single.steps
    assert max(gens[0].accepted) == 4
    steady = gens[0].rank_widths[len(gens[0].rank_widths) // 2]
    assert max(steady) < single.stats[len(single.stats) // 2].width


# ------------------------------------------------------------------------- a real gloo group


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                 HealthCheck.function_scoped_fixture])  # fmt: skip
@given(tiny_models(), configs.filter(lambda c: c.window >= 2), st.data())
def test_two_gloo_ranks_equal_greedy_in_the_same_steps(rank_pool, spec, config, data):
    model = built(spec)
    prompt, max_new, eos = data.draw(requests(model.args.vocab_size))
    greedy = greedy_generate(model, prompt, max_new, eos)
    single = lookahead_generate(model, prompt, max_new, config, eos)
    job = {"model": spec, "prompt": prompt, "max_new": max_new, "eos": eos, "config": vars(config)}
    for out in rank_pool.run(job):
        assert out["tokens"] == greedy.tokens and out["stop_reason"] == greedy.stop_reason
        assert out["steps"] == single.steps


# ------------------------------------------------------------------------- the command line


def launch_env(monkeypatch, rank: int, world: int, rendezvous: bool = True) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(world))
    if rendezvous:
        from rank_pool import free_port

        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("MASTER_PORT", str(free_port()))  # nobody listens there
    else:
        monkeypatch.delenv("MASTER_ADDR", raising=False)
        monkeypatch.delenv("MASTER_PORT", raising=False)


FIXED = ["-W", "3", "-N", "3", "-G", "2", "--copy", "0"]


@pytest.mark.parametrize(
    "case, extra, world, message",
    [
        ("more ranks than columns", ["-W", "2", "-N", "3", "-G", "2", "--copy", "0"], 3, "window has 2 columns"),
        ("more ranks than GPUs", [*FIXED, "--device", "cuda"], 2, "GPU"),
        ("no rendezvous", FIXED, 2, "no rendezvous"),
        ("nobody at the rendezvous", [*FIXED, "--rendezvous-timeout", "1"], 2, "could not join"),
        ("auto settings", [], 2, "auto"),
        ("one-process mode", [*FIXED, "--mode", "greedy"], 2, "one process"),
    ],
)
def test_bad_launches_exit_2_on_every_rank_with_one_line(make_tiny_llama, monkeypatch, capsys, case, extra, world, message):
    if case == "more ranks than GPUs" and torch.cuda.device_count() >= world:
        pytest.skip("this machine has enough GPUs for the launch")
    folder, _ = make_tiny_llama()
    capsys.readouterr()
    for rank in (0, 1):  # rank 0 prints; another rank prints only what it alone may know
        launch_env(monkeypatch, rank, world, rendezvous=case != "no rendezvous")
        assert main(["--ckpt", str(folder), *extra]) == 2, case
        err = capsys.readouterr().err
        if rank == 0 or case == "nobody at the rendezvous":
            assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
        else:
            assert err == ""


@pytest.mark.slow
def test_torchrun_json_is_one_object_with_the_ranks(make_tiny_llama, capsys):
    folder, _ = make_tiny_llama()
    common = ["--ckpt", str(folder), "--prompt", "the quick fox", "--max-new-tokens", "16", "--json", "--device", "cpu"]
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(os.getcwd()), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [torchrun, "--nproc-per-node", "2", "--master-port", str(__import__("rank_pool").free_port()),
         "-m", "minila.generate", *common, "--mode", "compare", *FIXED, "--threads", "1"],
        capture_output=True, text=True, env=env, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # rank 0 alone prints
    out = json.loads(lines[0])
    assert out["ranks"] == 2 and len(out["rank_width"]) == 2
    assert out["identical"] is True and out["tokens"] == out["greedy"]["tokens"]
    capsys.readouterr()
    # the same options in one process, with the paper's full step (the one the ranks split)
    assert main([*common, "--mode", "lookahead", *FIXED, "--budget", "full", "--memory", "off"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert single["tokens"] == out["tokens"] and single["steps"] == out["steps"] and "ranks" not in single


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="lists threads through Linux's /proc")
def test_leaving_the_group_ends_its_gloo_threads():
    """Issue 11: torch.distributed.nn.functional (imported when the model is built) binds
    group.WORLD as a default argument; imported after the group exists, it kept the group
    and its gloo threads alive past leave_group, into interpreter teardown, where rank 0
    sometimes aborted. A fresh process: this one may have imported it already."""
    script = (
        "import os, torch\n"
        "from minila.parallel.launch import join_group, leave_group, read_launch\n"
        "join_group(read_launch(), 'gloo', torch.device('cpu'), 60.0)\n"
        "import torch.distributed.nn.functional\n"  # as building the model does, after the join
        "leave_group()\n"
        "print(sorted(n for t in os.listdir('/proc/self/task') if 'gloo' in (n := open(f'/proc/self/task/{t}/comm').read().strip())))\n"
    )  # fmt: skip
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(__import__("rank_pool").free_port()),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(os.getcwd()), os.environ.get("PYTHONPATH")]))}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", proc.stdout  # no gloo thread outlives the group


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 20), st.integers(2, 6), st.integers(0, 15), st.sampled_from([0, 3, 10]), st.data())
def test_nominal_widths_split_the_single_process_step(window, ngram, guess, copy, data):
    ranks = data.draw(st.integers(1, window))
    widths = nominal_rank_widths(window, ngram, guess, copy, ranks)
    one = LookaheadConfig(window, ngram, guess, copy=copy).step_tokens
    assert nominal_rank_widths(window, ngram, guess, copy, 1) == (one,)
    assert len(widths) == ranks and max(widths) <= one <= sum(widths)  # the block-0 prefix is fed more than once


@pytest.mark.parametrize("configs, message", [(["greedy", "hf"], "drop hf"), (["la:2,3,2"], "window has 2 columns")])
def test_bench_under_torchrun_checks_its_methods(monkeypatch, capsys, tmp_path, configs, message):
    from minila.cli.bench.main import main as bench_main

    launch_env(monkeypatch, 0, 3)
    argv = ["--ckpt", str(tmp_path), "--dataset", "mtbench", "--configs", *configs, "--threads", "1"]
    assert bench_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
