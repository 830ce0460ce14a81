"""Data: text tokenizer, synthetic speech corpus, task templates, sources, packing, pipelines."""
