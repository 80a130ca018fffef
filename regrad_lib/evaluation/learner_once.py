"""The run an evaluation answers with: its learner loaded at most once, lazily (nothing to compute, nothing
loaded), its default gamma and whether its training had finished (recorded beside every result)."""

from __future__ import annotations

from collections.abc import Callable

from regrad_lib import config
from regrad_lib.core.learner import Learner
from regrad_lib.io import paths
from regrad_lib.io.run_state import run_finished, trained_state


def finished_state(run: str, learner) -> bool | None:
    """Whether the run answering had finished training: as loaded, else as on disk (None: no such run)."""
    loaded = learner.learner if isinstance(learner, LearnerOnce) else learner
    if isinstance(loaded, Learner) and loaded.run_finished is not None:
        return loaded.run_finished
    return run_finished(run) if paths.output_dir(run).is_dir() else None


class LearnerOnce:
    """Loads ``Learner.from_run(run, device)`` on first use only (nothing to compute: nothing loaded)."""

    def __init__(self, run: str, device: str, learner: Learner | None = None, allow_unfinished: bool = False):
        self.run, self.device, self.learner, self.allow_unfinished = run, device, learner, allow_unfinished

    def __call__(self) -> Learner:
        if self.learner is None:
            self.learner = Learner.from_run(self.run, self.device, self.allow_unfinished)
        return self.learner


def default_gamma(run: str) -> float:
    """The run's ``learner.gamma`` (its saved ``learner_config.json``): the gamma used when none is given."""
    return config.load_preset(trained_state(run, allow_unfinished=True).parent).learner.gamma   # only its config


def loader(run: str, device: str, learner, allow_unfinished: bool = False) -> Callable[[], Learner]:
    """``learner`` if it is already a loader, else a :class:`LearnerOnce` of the run (reusing ``learner`` if given)."""
    if callable(learner) and not isinstance(learner, Learner):
        return learner
    return LearnerOnce(run, device, learner, allow_unfinished)
