"""Fine-tuning pretrained exports on labelled text (`python -m pipeline finetune`).

config.py (the schema), data.py (labelled sources, label map, held-out split, tokenization,
word tags aligned to sub-tokens), objective.py (the `seqcls` objective the engine runs),
token_objective.py (`tokcls`, one tag per word), metrics.py (accuracy and macro-F1 that reduce
exactly across processes).
"""
