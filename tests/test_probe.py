"""The kernel probe (probe.py) and what happens on a CPU that cannot give a guarantee:
the bfloat16 refusal where products are not native (simulated here by hiding the CPU
support torch reports), and the invariant forward refused where the probe found a
kernel that is not invariant. The probe's own verdicts are checked against the machine
in test_attention.py (every row of a wide step equals greedy's, with its chunking)."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model
from hypothesis import given
from hypothesis import strategies as st

from minila import MinilaError
from minila.cli.generate import main
from minila.llama.invariant import choose_forward, guarantee, invariant_ok, make_width_invariant
from minila.llama.probe import Chunking, chunking_for, rows_alone

pytestmark = pytest.mark.isa


@given(st.integers(2, 40), st.integers(1, 40))
def test_rows_alone_finds_the_first_row_count_that_changes_a_row(rows, breaks_at):
    """A fake kernel that rounds every row differently once a call has `breaks_at` rows."""
    x = torch.arange(2 * rows * 3, dtype=torch.float32).view(2 * rows, 3)  # each call size reads its own window

    def kernel(chunk: torch.Tensor) -> torch.Tensor:
        return chunk + (0.5 if chunk.shape[0] >= breaks_at > 1 else 0.0)

    assert rows_alone(kernel, x) == (min(rows, breaks_at - 1) if breaks_at > 1 else rows)


def test_the_probe_is_kept_per_machine_and_switches(monkeypatch, tmp_path):
    monkeypatch.setenv("MINILA_CACHE", str(tmp_path))
    args = tiny_model(0, dim=64, hidden_dim=64).args
    first = chunking_for(args, torch.float32)
    assert len(list(tmp_path.glob("probe-*.json"))) == 1

    def no_probe(*_):
        raise AssertionError("probed again")

    monkeypatch.setattr("minila.llama.probe.probe", no_probe)
    assert chunking_for(args, torch.float32) == first  # read back
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "SSE41")  # other kernels (no stand-in sets this one): another entry
    with pytest.raises(AssertionError, match="probed again"):
        chunking_for(args, torch.float32)


def test_where_attention_is_not_invariant_invariant_refuses_and_auto_says_so(monkeypatch):
    broken = Chunking(attention_tile=None)
    monkeypatch.setattr("minila.llama.invariant.chunking_for", lambda args, dtype: broken)
    with pytest.raises(MinilaError, match="not invariant here: attention rounds"):
        make_width_invariant(tiny_model(0, dim=64, dtype=torch.float32))
    model = choose_forward(tiny_model(0, dim=128, hidden_dim=128, dtype=torch.bfloat16), "auto")
    assert model.attention_kernel.name == "plain" and guarantee(model).startswith("none")
    if invariant_ok(torch.bfloat16, torch.device("cpu")):  # else bfloat16 is refused before the probe
        assert "attention rounds" in guarantee(model)


def test_without_native_bfloat16_loading_and_the_cli_refuse_in_one_line(monkeypatch, make_tiny_llama, capsys):
    """An AVX2 CPU: torch reports no oneDNN bfloat16 (simulated), so packing would raise."""
    monkeypatch.setattr("minila.llama.model.packable_dtypes", lambda: (torch.float32,))
    monkeypatch.setattr("minila.llama.invariant.packable_dtypes", lambda: (torch.float32,))
    folder, _ = make_tiny_llama()
    capsys.readouterr()  # the fixture's progress bars
    from minila.llama.checkpoint import load_checkpoint

    with pytest.raises(MinilaError, match=r"bfloat16 products are not native on this CPU .*avx512_bf16.*--dtype float32"):
        load_checkpoint(folder, device="cpu", dtype="bfloat16")
    assert main(["--ckpt", str(folder), "--dtype", "bfloat16", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bfloat16 products are not native") and err.count("\n") == 1
    model = tiny_model(0, dim=128, hidden_dim=128, dtype=torch.bfloat16)
    assert choose_forward(model, "auto").attention_kernel.name == "plain"  # auto: what works
    with pytest.raises(MinilaError, match="not native"):
        make_width_invariant(model)
    assert load_checkpoint(folder, device="cpu", dtype="float32")[0].attention_kernel.name == "plain"  # float32 loads
    assert choose_forward(tiny_model(0, dim=64, dtype=torch.float32), "invariant").attention_kernel.name == "invariant"
