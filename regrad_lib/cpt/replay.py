"""The answer format CPT replays (``objective = "replay"``, :mod:`regrad_lib.cpt.continual`): the QA examples
03_train took its steps on, in its order and number, dealt out over a stream's optimizer steps.

Meta-training taught ReGrad's weights the answer frame (the chat prompt, a few words, then the end-of-turn token)
along with the update; a CPT trained on raw passages alone never sees that frame. Replaying exactly meta-training's
examples — the same questions, frame, label and number, no more — gives CPT the format without giving it anything
else ReGrad's weights did not get.
"""

from __future__ import annotations

from dataclasses import dataclass

from regrad_lib import config
from regrad_lib.core import task_batches
from regrad_lib.io import artifacts, paths
from regrad_lib.training import train_data


def replay_tasks(run: str) -> list[task_batches.Task]:
    """The QA examples 03_train took its steps on, in its order (:func:`train_data.stepped_tasks` of the run's saved
    request, preset and step count): what ``objective = "replay"`` trains on beside the passages."""
    folder = paths.output_dir(run)
    request, summary = paths.train_request_file(run), paths.train_summary_file(run)
    if not request.is_file() or not summary.is_file():
        raise FileNotFoundError(f"{paths.relative(folder)} lacks {paths.TRAIN_REQUEST} or {paths.TRAIN_SUMMARY}: "
                                "cpt objective 'replay' replays the QA examples a finished 03_train stepped on; train "
                                "the run first or use objective 'raw'")
    saved = artifacts.read_json(request)
    args = config.load_preset(folder).train
    data = train_data.training_data(saved["train_datasets"], saved["train_file"], args)
    return train_data.stepped_tasks(data.train, args.seed, args.meta_batch_size,
                                    int(artifacts.read_json(summary)["steps"]))


@dataclass(frozen=True)
class Replay:
    """Replayed QA examples dealt out in order over a stream's ``total_steps`` optimizer steps."""
    tasks: list[task_batches.Task]
    total_steps: int
    with_context: bool              # passages in the prompt as meta-training's (not blind_context)

    def at(self, step: int) -> list[task_batches.Task]:
        """The examples of optimizer step ``step`` (0-based over the whole stream)."""
        n = len(self.tasks)
        return self.tasks[step * n // self.total_steps:(step + 1) * n // self.total_steps]

    def describe(self) -> list[list]:
        return [[t.extra.get("dataset"), t.test_id] for t in self.tasks]
