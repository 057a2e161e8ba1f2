"""Fine-tuning pretrained exports on labelled text (`python -m pipeline finetune`).

config.py (the schema), data.py (labelled sources, label map, held-out split and named eval
sets, tokenization of texts and text pairs, word tags aligned to sub-tokens), objective.py (the
`seqcls` objective the engine runs, and the scores of the export on each held-out set),
regression.py (`seqreg`, a float score per text or pair), token_objective.py (`tokcls`, one tag
per word), metrics.py (accuracy, macro-F1 and seqeval entity counts that reduce exactly across
processes; GLUE scores by scikit-learn/scipy). `python -m pipeline finetune-suite` runs tasks x
seeds (pipeline/commands/finetune_suite.py).
"""
