"""Data: data sets by name and content, token files, documents, tokenizing, and the batches the trainer reads.

    corpora.py    data sets by name (shakespeare, openwebtext, text:, shards:, corpus:): content ids,
                  where each lives, its meta.json, its vocabulary, its token files (no numpy)
    sources.py    shards: and corpus: data sets: the grid's keys, their files, manifest ids (no numpy)
    shardfile.py  token files: llm.c's shard header (uint16 / uint32), nanoGPT's raw files (no numpy)
    documents.py  documents from parquet / arrow / jsonl / text files, cut into units of work (no numpy)
    pipeline.py   parallel, streaming, deterministic, resumable tokenizing into token files
    prepare.py    prepare a data set once: tokenize a corpus, or check a shards: data set's token ids
    tokenizer.py  GPT-2 BPE (tiktoken, offline) and character level
    batches.py    deterministic random-offset batches over a split's files (the one module here that imports torch)

The plan asks corpora.py for vocabulary sizes, data ids and split sizes without importing numpy or torch.
"""
