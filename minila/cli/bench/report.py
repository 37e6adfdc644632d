"""What the bench writes: the cost curve as a table against the roofline, results.md and plots."""

from __future__ import annotations

from pathlib import Path

from minila.errors import MinilaError
from minila.llama.model import Transformer
from minila.speed.cost_curve import measure_cost_curve
from minila.speed.roofline import forward_bound, measure_limits


def cost_curve(
    model: Transformer, context: int = 200, repeats: int = 5, widths: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
) -> tuple[list[dict], dict | None]:
    """Seconds for one forward of T new tokens with logits for all T rows, after a
    `context`-token cache, and its ratio to T=1 (speed/cost_curve.py's measurement, as a table).
    A lookahead step feeding T tokens pays off only if it accepts more than the ratio.
    On a CPU each row also carries the roofline bound (minila.roofline) and the
    measured time over it; the second value is the measured limits (None elsewhere)."""
    if context < 1 or context + 1 >= model.args.max_seq_len:
        raise MinilaError(f"--cost-context {context} leaves no room in the model's context of {model.args.max_seq_len}")
    curve = measure_cost_curve(model, widths=tuple(widths), context=context, repeats=repeats)
    rows = [{"T": t, "seconds": curve.step_seconds(t, t), "relative": curve.relative(t, t)} for t in curve.widths]
    if model.device.type != "cpu":
        return rows, None
    limits = measure_limits(model.dtype)
    for r in rows:  # the measured rows have logits for all T rows: so does their bound
        b = forward_bound(model.args, model.dtype.itemsize, limits, r["T"], context, logit_rows=r["T"])
        r.update(bound_seconds=b.seconds, bound_by="memory" if b.memory_seconds >= b.compute_seconds else "compute",
                 x_bound=r["seconds"] / b.seconds)  # fmt: skip
    return rows, {"gflops": limits.flops_per_second / 1e9, "read_gbps": limits.bytes_per_second / 1e9}


def task_table(by_task: dict[str, list[dict]]) -> list[str]:
    """Markdown lines: one row per method, one column per task, each cell "S / speedup"."""
    tasks = list(by_task)
    lines = ["| method | " + " | ".join(tasks) + " |", "| --- " * (len(tasks) + 1) + "|"]
    for i, name in enumerate(s["method"] for s in by_task["overall"]):
        cells = [f"{by_task[t][i]['S']:.2f} / {by_task[t][i]['speedup']:.2f}x" for t in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    prompts = ", ".join(f"{t} {by_task[t][0]['prompts']}" for t in tasks)
    return lines + ["", f"Each cell: S (Spec-Bench's mean accepted tokens) / speedup over minila greedy (tok/s) "
                    f"on the task's prompts ({prompts})."]  # fmt: skip


def markdown(meta: dict, summary: list[dict] | None, curve: list[dict] | None, by_task: dict | None = None) -> str:
    lines = [f"# minila benchmark: {meta.get('dataset') or 'cost curve'}", ""]
    lines.append(
        f"{meta['model']} · {meta['device']} {meta['dtype']} · {meta.get('forward', 'plain')} forward · "
        f"{meta['threads']} threads · "
        f"torch {meta['torch']}" + (f" · transformers {meta['transformers']}" if meta.get("transformers") else "")
    )
    if summary:
        n = summary[0]["prompts"]
        lines += [
            f"{n} prompts, at most {meta['max_new_tokens']} new tokens, {meta['date']}, {meta['machine']}",
            "",
            "| method | S | S per prompt | fed/step | step cost | tok/s | speedup | per prompt min / median "
            "| outside fwd | identical | tokens | steps | seconds |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        greedy_ms = 1000 * next(s["seconds"] / s["steps"] for s in summary if s["method"] == "greedy")
        for s in summary:
            fed = f"{s['fed_per_step']:.1f}" if s["fed_per_step"] is not None else "-"
            outside = "-" if s["outside_ms"] is None else f"{s['outside_ms']:.2f} ms ({100 * s['outside_ms'] / greedy_ms:.1f}%)"
            lines.append(
                f"| {s['method']} | {s['S']:.2f} | {s['S_mean']:.2f} | {fed} | {s['step_cost']:.2f} | "
                f"{s['tokens_per_second']:.1f} | {s['speedup']:.2f}x | {s['speedup_min']:.2f}x / {s['speedup_median']:.2f}x | "
                f"{outside} | {s['identical']}/{s['prompts']} | {s['tokens']} | {s['steps']} | {s['seconds']:.1f} |"
            )
        lines += [
            "",
            "S = total new tokens / total forward passes (prefill included; greedy = 1). S per prompt: the mean "
            "of each prompt's S. fed/step: mean tokens fed per forward after the prefill. step cost: seconds per "
            "forward over greedy's (prefill included), so speedup = S / step cost. tok/s: total tokens / "
            "total wall-clock seconds. speedup: tok/s over minila greedy's; per prompt: the smallest and the median "
            "of each prompt's greedy seconds over the method's. outside fwd: time per step outside the model's "
            "forward (bookkeeping, budget, verification, KV commit), and its share of a greedy step. identical: outputs equal to minila "
            "greedy's, token for token. Peers (hf*): transformers generate; their forward passes are counted "
            "by a hook on the model, their output cut at the first EOS and at the budget.",
        ]
        if by_task:
            lines += ["", "## Per task", "", *task_table(by_task)]
        parallel = [s for s in summary if s.get("rank_fed_per_step")]
        if parallel:
            lines += ["", f"## Lookahead parallelism: each step split over {meta['ranks']} ranks", "",
                      "| method | rows/step per rank | widest rank | step cost |", "| --- | --- | --- | --- |"]  # fmt: skip
            for s in parallel:
                per_rank = s["rank_fed_per_step"]
                lines.append(f"| {s['method']} | {' / '.join(f'{w:.1f}' for w in per_rank)} | {max(per_rank):.1f} | "
                             f"{s['step_cost']:.2f} |")  # fmt: skip
            lines += ["", "Rows per rank: mean tokens each rank fed per step (its columns, the block-0 prefix they "
                      "attend to, its candidates, the re-fed accepted tokens); fed/step above is the widest rank's. "
                      "Step cost: seconds per step over greedy's, greedy running on every rank alike."]  # fmt: skip
        chosen = (meta.get("lookahead") or {}).get("la:auto")
        if chosen:
            memory = meta.get("memory") or "empty at start"
            share = next((s.get("window_share") for s in summary if s["method"] == "la:auto"), None)
            ran = "" if share is None else f" It ran the window in {100 * share:.0f}% of its steps."
            lines += ["", "la:auto decided each step within " + ", ".join(f"{k}={v}" for k, v in chosen.items())
                      + f" on this machine; n-gram memory: {memory}.{ran}"]  # fmt: skip
    if curve:
        lines += ["", f"## Cost of one forward of T tokens after a {meta['cost_context']}-token cache", ""]
        lines += ["| T | " + " | ".join(str(r["T"]) for r in curve) + " |", "| --- " * (len(curve) + 1) + "|"]
        lines += ["| ms | " + " | ".join(f"{1000 * r['seconds']:.1f}" for r in curve) + " |"]
        lines += ["| relative | " + " | ".join(f"{r['relative']:.2f}" for r in curve) + " |"]
        limits = meta.get("limits")
        if limits:
            lines += ["| bound ms | " + " | ".join(f"{1000 * r['bound_seconds']:.1f}" for r in curve) + " |"]
            lines += ["| x bound | " + " | ".join(f"{r['x_bound']:.2f}" for r in curve) + " |"]
            lines += [
                "",
                f"bound: what this machine's limits allow, the larger of weight and cache bytes over the read "
                f"bandwidth ({limits['read_gbps']:.1f} GB/s measured) and FLOPs over the peak product rate "
                f"({limits['gflops']:.0f} GFLOP/s in {meta['dtype']}); x bound: measured over bound "
                f"(minila/roofline.py). The compute limit takes over from T = "
                f"{next((r['T'] for r in curve if r['bound_by'] == 'compute'), '-')}.",
            ]
    return "\n".join(lines) + "\n"


def plots(out: Path, summary: list[dict] | None, curve: list[dict] | None) -> list[Path]:
    """speedup.png (speedup and S per method), scaling.png (steps and S against tokens fed
    per step, with the cost curve when measured) and cost_curve.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if summary:
        names = [s["method"] for s in summary]
        colors = {n: "tab:orange" if n.startswith("hf") else "tab:blue" for n in names}  # peers in orange
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, key, title in ((axes[0], "speedup", "speedup over minila greedy (tok/s)"), (axes[1], "S", "S = tokens / forward passes")):
            ax.bar(names, [s[key] for s in summary], color=[colors[n] for n in names])
            ax.axhline(1.0, color="gray", lw=1, ls="--")
            ax.set_title(title)
            ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        fig.savefig(out / "speedup.png", dpi=120)
        plt.close(fig)
        written.append(out / "speedup.png")

        points = [s for s in summary if s["fed_per_step"]]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, key, label in ((axes[0], "steps", "forward passes, all prompts"), (axes[1], "S", "S = tokens / forward passes")):
            ax.scatter([s["fed_per_step"] for s in points], [s[key] for s in points], c=[colors[s["method"]] for s in points])
            labels: dict[tuple, list[str]] = {}  # methods on the same spot share one label
            for s in points:
                labels.setdefault((s["fed_per_step"], s[key]), []).append(s["method"])
            for xy, names_here in labels.items():
                ax.annotate(", ".join(names_here), xy, textcoords="offset points", xytext=(4, 4), fontsize=8)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("tokens fed per step")
            ax.set_ylabel(label)
        if curve:
            axes[1].plot([r["T"] for r in curve], [r["relative"] for r in curve], color="tab:red", lw=1,
                         label="cost of a step of T tokens (x greedy step)")  # fmt: skip
            axes[1].legend(fontsize=8)
        fig.suptitle("scaling: more tokens per step, fewer steps")
        fig.tight_layout()
        fig.savefig(out / "scaling.png", dpi=120)
        plt.close(fig)
        written.append(out / "scaling.png")
    if curve:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ts = [r["T"] for r in curve]
        ax.plot(ts, [1000 * r["seconds"] for r in curve], marker="o", label="measured")
        if "bound_seconds" in curve[0]:
            ax.plot(ts, [1000 * r["bound_seconds"] for r in curve], ls="--", color="gray",
                    label="bound: max(bytes / bandwidth, FLOPs / peak)")  # fmt: skip
            ax.legend(fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("new tokens T in one forward")
        ax.set_ylabel("ms per forward")
        ax.set_title("cost of one forward pass")
        fig.tight_layout()
        fig.savefig(out / "cost_curve.png", dpi=120)
        plt.close(fig)
        written.append(out / "cost_curve.png")
    return written
