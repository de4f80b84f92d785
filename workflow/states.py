"""What the job and delivery state machines (:mod:`workflow.jobs`, :mod:`workflow.deliveries`) share.

Both are written as pynetdicom's ``fsm.py`` writes the PS3.8 9.2 upper-layer machine: a table
``{(state, action): new_state}`` and one function that performs a transition. A pair that is not in
the table is refused with :class:`TransitionNotAllowedError` and nothing is written.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, TypeVar, cast

from sqlalchemy import ColumnElement, CursorResult, select, update
from sqlalchemy.orm import Session

State = TypeVar("State", bound=enum.Enum)
Action = TypeVar("Action", bound=enum.Enum)

__all__ = ["TransitionError", "RowNotFoundError", "ActionRefusedError", "TransitionNotAllowedError",
           "StateChangedError",
           "allowed_from", "perform", "expire_loaded"]


class TransitionError(Exception):
    """A state transition of a job or delivery could not be made."""


class RowNotFoundError(TransitionError, LookupError):
    """No job or delivery has this id."""


class ActionRefusedError(TransitionError):
    """An administrator's action is refused by a rule of the work it acts on (the API answers 409)."""


class TransitionNotAllowedError(ActionRefusedError):
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


def allowed_from(table: Mapping[tuple[State | None, Action], State], states: type[State],
                 action: Action) -> list[State]:
    """The states in which ``action`` may be performed, in the order of ``states``."""
    return [s for s in states if (s, action) in table]


def perform(
    session: Session,
    model: type[Any],
    row: Any,
    action: Action,
    table: Mapping[tuple[State | None, Action], State],
    *,
    what: str,
    not_found: type[RowNotFoundError],
    create: Action,
    when: ColumnElement[bool] | None,
    values: dict[str, Any],
) -> tuple[int, State]:
    """Make one transition of ``row`` (a ``model`` instance or id) by ``table``; (row id, new state).

    ``create`` on a new, unsaved instance saves it in the table's first state. Any other action is
    one ``UPDATE ... WHERE id = :id AND state = <the state read> [AND when]`` writing the new state
    and ``values``; a copy of the row loaded in ``session`` reloads afterwards. The caller adds the
    event row. Raises ``not_found``, :class:`TransitionNotAllowedError` or :class:`StateChangedError`,
    having written nothing.
    """
    if isinstance(row, model) and action is create:
        new = _new_state(table, what, row.id or 0, None, action)
        row.state = new
        for key, value in values.items():
            setattr(row, key, value)
        session.add(row)
        session.flush()
        return int(row.id), new
    row_id = int(row.id if isinstance(row, model) else row)
    current = session.scalar(select(model.state).where(model.id == row_id))
    if current is None:
        raise not_found(f"no {what} {row_id}")
    new = _new_state(table, what, row_id, current, action)
    conditions = [model.id == row_id, model.state == current]
    if when is not None:
        conditions.append(when)
    changed = cast(CursorResult[Any], session.execute(
        update(model).where(*conditions).values(state=new, **values)
        .execution_options(synchronize_session=False)
    )).rowcount
    if changed != 1:
        raise StateChangedError(f"{what} {row_id} changed while {action.value} was being made")
    expire_loaded(session, model, row_id)
    return row_id, new


def _new_state(table: Mapping[tuple[State | None, Action], State], what: str, row_id: int,
               state: State | None, action: Action) -> State:
    try:
        return table[(state, action)]
    except KeyError:
        allowed = [s.value for (s, a) in table if a is action and s is not None]
        raise TransitionNotAllowedError(what, row_id, state, action, allowed) from None
