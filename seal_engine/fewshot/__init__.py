"""Few-shot task adaptation: the model writes a training recipe for a new task, the
recipe is executed (test-time training of a LoRA on augmented leave-n-out episodes of
the task's examples), and the adapted model answers the task's new inputs.

Pure Python (no torch): ``grids``, ``augment``, ``arc``, ``text_tasks``, ``ttt_data``,
``recipes``, ``voting`` and ``datasets`` (the one loader of task files and the built-in
suite). The modules that run the model: ``prompts``, ``constrained``, ``recipe_sampling``,
``training``, ``execute``, ``inference``, ``paraphrase`` and ``adapt`` (one task job end to
end). The RL hooks are :mod:`seal_engine.rl.fewshot`.
"""
