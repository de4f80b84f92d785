"""What the job and delivery state machines (:mod:`workflow.jobs`, :mod:`workflow.deliveries`) share.

Both are written as pynetdicom's ``fsm.py`` writes the PS3.8 9.2 upper-layer machine: a table
``{(state, action): new_state}`` and one function that performs a transition. A pair that is not in
the table is refused with :class:`TransitionNotAllowedError` and nothing is written.
"""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy.orm import Session

__all__ = ["TransitionError", "RowNotFoundError", "TransitionNotAllowedError", "StateChangedError",
           "expire_loaded"]


class TransitionError(Exception):
    """A state transition of a job or delivery could not be made."""


class RowNotFoundError(TransitionError, LookupError):
    """No job or delivery has this id."""


class TransitionNotAllowedError(TransitionError):
    """The row's current state does not allow the action (the API answers 409)."""

    def __init__(self, what: str, row_id: int, state: enum.Enum | None, action: enum.Enum,
                 allowed_from: list[str]) -> None:
        self.row_id, self.from_state, self.action = row_id, state, action
        current = state.value if state is not None else "(none)"
        super().__init__(f"{what} {row_id} is {current}; {action.value} is allowed only from "
                         f"{', '.join(allowed_from) or 'no state'}")


class StateChangedError(TransitionError):
    """The row changed between reading its state and writing the new one (another process won)."""


def expire_loaded(session: Session, model: type[Any], row_id: int) -> None:
    """After a transition's UPDATE: a copy of the row loaded in ``session`` reloads on next access."""
    loaded = session.identity_map.get(session.identity_key(model, row_id))
    if loaded is not None:
        session.expire(loaded)
