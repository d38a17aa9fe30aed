"""The shipped plugin plugins/z_loss.py: the loss and its gradients against PaLM's formula
written here, the same under loss_chunk, composed after another plugin's head transform, and
its grid."""
import torch
import torch.nn.functional as F

from plugin_helpers import ROOT, batch, cfg_for, loss_and_grads, model, single_thread  # noqa: F401


def formula(logits, targets, coef):
    """Cross-entropy + coef * log(Z)^2, both means over the tokens whose target is not -1."""
    counted = targets != -1
    ce = F.cross_entropy(logits[counted], targets[counted])
    return ce + coef * torch.logsumexp(logits[counted], dim=-1).pow(2).mean()


def test_z_loss_is_palms_term_in_value_and_gradient():
    """The plugin's loss and gradients equal autograd's through the formula on the built-in
    model's logits (same weights); a large coefficient so the term counts."""
    base = model(cfg_for(("z_loss",)))
    z = model(cfg_for(("z_loss",), z_loss=0.5))
    z.load_state_dict(base.state_dict())
    idx, targets = batch(base.config)
    targets[1, 5:9] = -1
    loss, grads = loss_and_grads(z, idx, targets)
    base.zero_grad(set_to_none=True)
    want = formula(base(idx)[0], targets, 0.5)
    want.backward()
    torch.testing.assert_close(loss, want.detach(), atol=1e-6, rtol=1e-6)
    for name, p in base.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-6, rtol=1e-5, msg=name)
    with torch.no_grad():  # the term is not negligible: the check above would see it missing
        assert abs(loss - F.cross_entropy(base(idx)[0][targets != -1], targets[targets != -1])) > 1.0


def test_loss_chunk_computes_the_term_chunk_by_chunk():
    plain = model(cfg_for(("z_loss",), z_loss=0.5))
    chunked = model(cfg_for(("z_loss",), z_loss=0.5, loss_chunk=7))
    chunked.load_state_dict(plain.state_dict())
    idx, targets = batch(plain.config)
    targets[0, :4] = -1
    loss_p, grads_p = loss_and_grads(plain, idx, targets)
    loss_c, grads_c = loss_and_grads(chunked, idx, targets)
    torch.testing.assert_close(loss_c, loss_p, atol=1e-6, rtol=1e-6)
    for name in grads_p:
        torch.testing.assert_close(grads_c[name], grads_p[name], atol=1e-6, rtol=1e-5, msg=name)


def test_z_loss_sees_the_logits_another_plugin_transformed():
    """softcap's head part, then z_loss's term on the capped logits: points of two plugins compose."""
    both = model(cfg_for(("softcap", "z_loss"), logit_softcap=0.05, z_loss=0.5))
    base = model(cfg_for(("softcap", "z_loss")))
    base.load_state_dict(both.state_dict())
    idx, targets = batch(both.config)
    with torch.no_grad():
        capped = 0.05 * torch.tanh(base(idx)[0] / 0.05)
        torch.testing.assert_close(both(idx, targets)[1], formula(capped, targets, 0.5), atol=1e-6, rtol=1e-6)


def test_the_shipped_grid_compares_gpt_with_and_without_z_loss(monkeypatch):
    from ablate.plan.grid import load_grid

    monkeypatch.chdir(ROOT)
    grid = load_grid(ROOT / "grids" / "z_loss.yaml")
    assert [c.config.z_loss for c in grid.cells] == [0.0, 1e-4]
    assert grid.compare["baseline"] == {"z_loss": 0.0} and all(c.config.loss_chunk for c in grid.cells)
