"""Meta-testing: scoring adapted meta-models on a fixed list of target tasks.

``evaluator`` adapts and scores (Alg. 2's outer frame), ``supcon`` holds
ICFIL's calibration loss, ``compare`` scores PURER and the baselines on the
same tasks, and ``results`` turns the scores into paper-style tables.
"""
