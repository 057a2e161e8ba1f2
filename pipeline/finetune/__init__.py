"""Fine-tuning pretrained exports on labelled text (`python -m pipeline finetune`).

config.py (the schema), data.py (labelled sources, label map, held-out split, tokenization),
objective.py (the `seqcls` objective the engine runs), metrics.py (accuracy and macro-F1 that
reduce exactly across processes).
"""
