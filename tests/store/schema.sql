CREATE TABLE meta (
    key VARCHAR PRIMARY KEY,
    value VARCHAR
);

CREATE TABLE ingested (
    grid VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    fingerprint VARCHAR,
    digest VARCHAR,
    ingested_at DOUBLE
);

CREATE TABLE broken (
    grid VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    run_dir VARCHAR,
    problem VARCHAR
);

CREATE TABLE runs (
    grid VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    cell_id VARCHAR,
    run_dir VARCHAR,
    state VARCHAR,
    attempts BIGINT,
    job_id VARCHAR,
    executor VARCHAR,
    host VARCHAR,
    status_device VARCHAR,
    started DOUBLE,
    ended DOUBLE,
    heartbeat DOUBLE,
    updated DOUBLE,
    status_step BIGINT,
    oom_step BIGINT,
    oom_peak_alloc BIGINT,
    error VARCHAR,
    note VARCHAR,
    arch VARCHAR,
    n_layer BIGINT,
    n_head BIGINT,
    n_embd BIGINT,
    n_kv_head BIGINT,
    tie_embeddings BOOLEAN,
    share_attn BIGINT,
    "window" BIGINT,
    context BIGINT,
    vocab_size BIGINT,
    attn_backend VARCHAR,
    dataset VARCHAR,
    data_id VARCHAR,
    tokenizer VARCHAR,
    max_iters BIGINT,
    batch_size BIGINT,
    grad_accum BIGINT,
    lr DOUBLE,
    min_lr DOUBLE,
    warmup_iters BIGINT,
    lr_decay_iters BIGINT,
    weight_decay DOUBLE,
    beta1 DOUBLE,
    beta2 DOUBLE,
    grad_clip DOUBLE,
    seed BIGINT,
    dtype VARCHAR,
    param_dtype VARCHAR,
    compile BOOLEAN,
    act_ckpt VARCHAR,
    loss_chunk BIGINT,
    plugins VARCHAR,
    device VARCHAR,
    diverge_loss DOUBLE,
    eval_interval BIGINT,
    eval_iters BIGINT,
    log_interval BIGINT,
    ckpt_interval BIGINT,
    keep_ckpt BOOLEAN,
    params_total BIGINT,
    params_embedding BIGINT,
    params_non_embedding BIGINT,
    params_attention BIGINT,
    ckpt_bytes BIGINT,
    peak_alloc BIGINT,
    peak_reserved BIGINT,
    device_capacity BIGINT,
    tracked_params BIGINT,
    tracked_buffers BIGINT,
    tracked_grads BIGINT,
    tracked_optimizer BIGINT,
    tracked_activations BIGINT,
    tracked_temps BIGINT,
    tracked_other BIGINT,
    tracked_total BIGINT,
    tracked_step BIGINT,
    tokens_per_s DOUBLE,
    mfu_causal DOUBLE,
    mfu_nanogpt DOUBLE,
    peak_flops DOUBLE,
    final_val_loss DOUBLE,
    final_train_loss DOUBLE,
    final_eval_step BIGINT,
    steps BIGINT,
    tokens BIGINT,
    train_s DOUBLE,
    wall_s DOUBLE,
    attn_backend_used VARCHAR,
    device_type VARCHAR,
    device_name VARCHAR,
    world_size BIGINT,
    torch_version VARCHAR,
    ablate_version VARCHAR,
    n_evals BIGINT,
    n_train BIGINT,
    last_step BIGINT,
    last_tokens BIGINT,
    last_elapsed DOUBLE,
    last_val_loss DOUBLE,
    last_val_loss_se DOUBLE,
    last_train_loss DOUBLE,
    max_mem_peak BIGINT,
    skipped_lines BIGINT,
    version VARCHAR,
    git_sha VARCHAR,
    has_summary BOOLEAN,
    config_json VARCHAR,
    status_json VARCHAR,
    summary_json VARCHAR
);

CREATE TABLE evals (
    grid VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    step BIGINT,
    tokens BIGINT,
    elapsed DOUBLE,
    val_loss DOUBLE,
    val_loss_se DOUBLE,
    train_loss DOUBLE
);

CREATE TABLE train (
    grid VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    step BIGINT,
    tokens BIGINT,
    loss DOUBLE,
    lr DOUBLE,
    step_time DOUBLE,
    tokens_per_s DOUBLE,
    mem_alloc BIGINT,
    mem_peak BIGINT,
    mem_reserved BIGINT,
    mem_peak_reserved BIGINT
);

CREATE VIEW final AS
SELECT grid, run_id, cell_id, state, seed, arch, n_layer, n_head, n_embd, n_kv_head, tie_embeddings, share_attn, "window", context, vocab_size, attn_backend, dataset, data_id, tokenizer, max_iters, batch_size, grad_accum, lr, min_lr, warmup_iters, lr_decay_iters, weight_decay, beta1, beta2, grad_clip, dtype, param_dtype, compile, act_ckpt, loss_chunk, plugins, diverge_loss, eval_iters,
       coalesce(final_val_loss, last_val_loss) AS final_val_loss,
       -- the last eval's standard error: the final eval's, since a finished run evals at its last step
       last_val_loss_se AS final_val_loss_se,
       coalesce(final_train_loss, last_train_loss) AS final_train_loss,
       coalesce(final_eval_step, last_step) AS final_step,
       last_tokens AS final_tokens, last_elapsed AS final_elapsed,
       state = 'done' AS finished
FROM runs;

CREATE VIEW cells AS
SELECT grid, cell_id, arch, n_layer, n_head, n_embd, n_kv_head, tie_embeddings, share_attn, "window", context, vocab_size, attn_backend, dataset, data_id, tokenizer, max_iters, batch_size, grad_accum, lr, min_lr, warmup_iters, lr_decay_iters, weight_decay, beta1, beta2, grad_clip, dtype, param_dtype, compile, act_ckpt, loss_chunk, plugins, diverge_loss, eval_iters,
       count(*) AS n_runs,
       count(*) FILTER (WHERE finished) AS n_done,
       list(run_id ORDER BY seed) AS run_ids,
       list(DISTINCT state) AS states,
       avg(final_val_loss) FILTER (WHERE finished) AS mean_val_loss,
       stddev_samp(final_val_loss) FILTER (WHERE finished)
           / sqrt(count(final_val_loss) FILTER (WHERE finished)) AS se_val_loss,
       -- the eval sample's own noise: seeds are scored on the same windows, so their eval errors
       -- do not average out over seeds; the mean of their standard errors
       avg(final_val_loss_se) FILTER (WHERE finished) AS eval_se_val_loss,
       avg(final_train_loss) FILTER (WHERE finished) AS mean_train_loss
FROM final
GROUP BY grid, cell_id, arch, n_layer, n_head, n_embd, n_kv_head, tie_embeddings, share_attn, "window", context, vocab_size, attn_backend, dataset, data_id, tokenizer, max_iters, batch_size, grad_accum, lr, min_lr, warmup_iters, lr_decay_iters, weight_decay, beta1, beta2, grad_clip, dtype, param_dtype, compile, act_ckpt, loss_chunk, plugins, diverge_loss, eval_iters;
