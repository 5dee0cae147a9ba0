"""Few-shot task adaptation: the model writes a training recipe for a new task, the
recipe is executed (test-time training of a LoRA on augmented leave-n-out episodes of
the task's examples), and the adapted model answers the task's new inputs.

This package's top level imports no torch: grids, augmentations, tasks, episodes,
recipes and voting are pure Python. The modules that run the model are imported
explicitly: ``prompts``, ``training``, ``execute``, ``inference``, ``paraphrase``,
``recipe_sampling`` and ``rl_hooks``.
"""

from seal_engine.fewshot.arc import ArcPair, ArcTask, TaskError, load_tasks, shared_task_files, task_from_dict
from seal_engine.fewshot.augment import ARC_GROUPS, ColorMap, NotInvertible, Transform, group_transforms, random_color_map
from seal_engine.fewshot.grids import MAX_SIDE, Grid, GridError, as_grid, grid_to_text, text_to_grid
from seal_engine.fewshot.recipes import GROUPS, Recipe, RecipeError, check_budget, default_recipe, parse_recipe
from seal_engine.config import FewShotSettings
from seal_engine.fewshot.text_tasks import TextPair, TextTask, text_task, text_task_suite
from seal_engine.fewshot.ttt_data import Episode, arc_episodes, leave_n_out, text_episodes
from seal_engine.fewshot.voting import solved, vote

__all__ = [
    "ARC_GROUPS", "GROUPS", "MAX_SIDE", "ArcPair", "ArcTask", "ColorMap", "Episode", "FewShotSettings", "Grid",
    "GridError", "NotInvertible", "Recipe", "RecipeError", "TaskError", "TextPair", "TextTask", "Transform",
    "arc_episodes", "as_grid", "check_budget", "default_recipe", "grid_to_text", "group_transforms", "leave_n_out",
    "load_tasks", "parse_recipe", "random_color_map", "shared_task_files", "solved", "task_from_dict", "text_episodes",
    "text_task", "text_task_suite", "text_to_grid", "vote",
]
