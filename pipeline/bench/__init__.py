"""Benchmarks shared by scripts/bench_mlm.py (CPU, issue 2) and scripts/bench_gpu.py (issue 9).

`cases`: one benchmark case (our engine or transformers' Trainer, same RunConfig) run in its own
process, so its peak memory is its own; `worker`: the process that runs one case; `prep`: data
preparation (ours vs run_mlm's tokenize + group_texts); `report`: tables, device, versions.
"""
