"""What composes the engine and the evaluation: from a configuration to a run.

``build`` turns a resolved configuration into ready components (zoo,
meta-model, plugins, trainer); ``compare`` scores the trained learner and the
baselines on the same tasks; ``real_data`` trains the real-data upper bound;
``final`` writes a run's result table. Nothing below this package
(engine, evaluation, kernels, plugins) imports from it.
"""
