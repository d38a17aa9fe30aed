"""GPT and nGPT with the four ablations (gpt.py), assembled from the parts at the extension
points (points.py: where a plugin plugs in), and the attention kernels (backends.py).

    model = build_model(cfg)                 # a resolved RunConfig -> GPT (CPU, fp32); plugin_parts: a plugin's
    logits, loss = model(idx, targets)
    model.normalize_()                        # nGPT: after building the optimizer and every step
    torch.optim.AdamW(model.optimizer_groups(cfg.weight_decay), ...)
"""
from ablate.model.backends import attend, resolve_backend
from ablate.model.gpt import GPT, build_model, model_sizes

__all__ = ["GPT", "attend", "build_model", "model_sizes", "resolve_backend"]
