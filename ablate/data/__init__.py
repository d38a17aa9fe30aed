"""Data: corpora, tokenizers, prepared data sets and the batches the trainer reads.

    corpora.py    names, content ids, where a data set lives, its meta.json, its vocabulary (no numpy)
    prepare.py    tokenize a corpus once into train.bin / val.bin / meta.json
    tokenizer.py  GPT-2 BPE (tiktoken, offline) and character level
    batches.py    deterministic random-offset batches (the one module here that imports torch)

The plan asks corpora.py for vocabulary sizes and data ids without importing numpy or torch.
"""
