"""Objectives: one module each (mlm, infonce, cd, nce...), found by the registry's discovery."""
