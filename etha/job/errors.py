"""The job model's one error: a TrainingJob that cannot run, naming the bad field."""

from __future__ import annotations


class InvalidSpec(ValueError):
    """A TrainingJob that cannot run; ``field`` is the path of the bad field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
