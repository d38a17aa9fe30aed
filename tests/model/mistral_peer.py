"""Our GPT as a transformers `MistralForCausalLM`, weight for weight, and its gradients mapped back.

Test-only (transformers is in the `test` extra). Every correspondence is written out here, once:

    ours                              Mistral
    wte.weight                        model.embed_tokens.weight
    blocks.l.norm_A / norm_M          model.layers.l.input_layernorm / post_attention_layernorm
    blocks.l.attn.c_q/c_k/c_v/c_proj  model.layers.l.self_attn.q_proj/k_proj/v_proj/o_proj
    blocks.l.mlp.c_fc rows [:4d]      model.layers.l.mlp.up_proj    (u: the linear half)
    blocks.l.mlp.c_fc rows [4d:]      model.layers.l.mlp.gate_proj  (v: the half SiLU is applied to)
    blocks.l.mlp.c_proj               model.layers.l.mlp.down_proj
    norm_f.weight, lm_head.weight     model.norm.weight, lm_head.weight

SwiGLU: ours is u * silu(v) with (u, v) = c_fc(x).chunk(2); Mistral's is
down(silu(gate(x)) * up(x)), so gate = v and up = u. RoPE: both rotate the pair (i, i + hd/2)
by t * theta^(-2i/hd) (Mistral's rotate_half), theta 10000, so q/k rows map one to one, in
order: no permutation anywhere. ALBERT sharing: Mistral has no sharing, so every layer gets a
copy of its group's attention; our shared gradient must equal the sum over the copies. Tying:
Mistral ties lm_head to embed_tokens itself (tie_word_embeddings), and its tied gradient is
compared with ours. Sliding window: transformers 4.57 keeps key j for query i iff
i - sliding_window < j <= i (masking_utils.sliding_window_overlay: kv_idx > q_idx - sliding_window,
and causal), i.e. sliding_window keys including the query itself, which is exactly our W.
MistralConfig's own default is a 4096 window, so "no window" must be passed as None.
"""
from __future__ import annotations

import torch

ATTN = {"c_q": "q_proj", "c_k": "k_proj", "c_v": "v_proj", "c_proj": "o_proj"}


def mistral_config(cfg, attn_implementation: str = "eager"):
    from transformers import MistralConfig

    config = MistralConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=4 * cfg.n_embd,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim, hidden_act="silu", max_position_embeddings=cfg.context, rms_norm_eps=1e-6,
        rope_theta=10000.0, tie_word_embeddings=cfg.tie_embeddings,
        sliding_window=cfg.window,  # W keys including the query: the same count (module docstring)
        attention_dropout=0.0, attn_implementation=attn_implementation)
    return config


def mistral_state(model) -> dict:
    """Mistral's state dict holding `model`'s weights (a shared attention copied into every layer)."""
    d = model.config.n_embd
    state = {"model.embed_tokens.weight": model.wte.weight, "model.norm.weight": model.norm_f.weight,
             "lm_head.weight": model.lm_head.weight}
    for l, block in enumerate(model.blocks):
        p = f"model.layers.{l}."
        state[p + "input_layernorm.weight"] = block.norm_A.weight
        state[p + "post_attention_layernorm.weight"] = block.norm_M.weight
        for ours, theirs in ATTN.items():
            state[p + f"self_attn.{theirs}.weight"] = getattr(block.attn, ours).weight
        c_fc = block.mlp.c_fc.weight  # (8d, d): rows [:4d] make u, rows [4d:] make v
        state[p + "mlp.up_proj.weight"] = c_fc[:4 * d]
        state[p + "mlp.gate_proj.weight"] = c_fc[4 * d:]
        state[p + "mlp.down_proj.weight"] = block.mlp.c_proj.weight
    return {k: v.detach().clone() for k, v in state.items()}


def as_mistral(model, attn_implementation: str = "eager", cfg=None):
    """A MistralForCausalLM (fp32, train mode, no dropout) computing what `model` computes
    (with `cfg`'s attention options instead of model.config's, when given)."""
    from transformers import MistralForCausalLM

    peer = MistralForCausalLM(mistral_config(cfg or model.config, attn_implementation)).float()
    missing, unexpected = peer.load_state_dict(mistral_state(model), strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    assert (peer.lm_head.weight is peer.model.embed_tokens.weight) == model.config.tie_embeddings
    return peer.train()


def mistral_grads(model, peer) -> dict:
    """Mistral's gradients in our parameter names: a shared tensor gets the sum over the layers
    holding a copy of it, c_fc the rows of up (u) then gate (v)."""
    g = {n: p.grad for n, p in peer.named_parameters(remove_duplicate=False)}
    grads: dict = {}

    def add(name, grad):
        grads[name] = grad.clone() if name not in grads else grads[name] + grad

    ours = {id(p): n for n, p in model.named_parameters()}  # de-duplicated: a shared tensor's first name
    add(ours[id(model.wte.weight)], g["model.embed_tokens.weight"])
    if not model.config.tie_embeddings:  # tied: embed_tokens' gradient already holds the head's part
        add("lm_head.weight", g["lm_head.weight"])
    add("norm_f.weight", g["model.norm.weight"])
    for l, block in enumerate(model.blocks):
        p = f"model.layers.{l}."
        add(f"blocks.{l}.norm_A.weight", g[p + "input_layernorm.weight"])
        add(f"blocks.{l}.norm_M.weight", g[p + "post_attention_layernorm.weight"])
        for mine, theirs in ATTN.items():
            add(ours[id(getattr(block.attn, mine).weight)], g[p + f"self_attn.{theirs}.weight"])
        add(f"blocks.{l}.mlp.c_fc.weight", torch.cat([g[p + "mlp.up_proj.weight"], g[p + "mlp.gate_proj.weight"]]))
        add(f"blocks.{l}.mlp.c_proj.weight", g[p + "mlp.down_proj.weight"])
    return grads
