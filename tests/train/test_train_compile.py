"""compile: true trains the same model as eager (torch.compile with inductor on CPU; CUDA is
measured by benchmarks/bench_compile.py on a GPU machine)."""
import pytest
import torch

from ablate.train.job import train
from torch_private import compiled_graphs
from train_helpers import evals_of


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # raised inside torch.compile
@pytest.mark.parametrize("arch", ["gpt", "ngpt"])
def test_compiled_run_matches_eager(make_run, arch):
    opts = dict(max_iters=20, eval_interval=10, n_kv_head=1, window=8)  # GQA + SWA through the compiled path
    eager, compiled = make_run("eager", arch, **opts), make_run("compiled", arch, compile=True, **opts)
    torch.compiler.reset()
    before = compiled_graphs()
    assert train(eager) == "done"
    assert compiled_graphs() == before  # eager compiles nothing...
    assert train(compiled) == "done"
    assert compiled_graphs() > before  # ...and compile: true really compiled
    a, b = evals_of(eager), evals_of(compiled)
    assert [e["step"] for e in a] == [e["step"] for e in b] == [0, 10, 20]
    for x, y in zip(a, b):  # fp32: only the order of floating point operations may differ
        assert y["val_loss"] == pytest.approx(x["val_loss"], rel=1e-4, abs=1e-4)
    assert b[-1]["val_loss"] < b[0]["val_loss"] - 0.3  # and it learned
