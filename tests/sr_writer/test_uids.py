"""derive_uid: deterministic, distinct, valid UIDs."""

from __future__ import annotations

import dataclasses
import re
import uuid

import pytest

from common.uids import NAMESPACE, derive_uid
from sr_writer.gsps import build_presentation_states
from tests.sr_writer.samples import content_for

UID = re.compile(r"^2\.25\.(0|[1-9][0-9]*)$")


def test_same_parts_same_uid_and_valid() -> None:
    uid = derive_uid("1.2.3", "1", "en", "sr")
    assert uid == derive_uid("1.2.3", "1", "en", "sr")
    assert UID.match(uid) and len(uid) <= 64


def test_every_part_and_its_position_matter() -> None:
    base = ("1.2.3", "1", "en", "sr")
    uids = {derive_uid(*base)}
    for index in range(len(base)):
        changed = list(base)
        changed[index] = changed[index] + "x"
        uids.add(derive_uid(*changed))
    uids.add(derive_uid("1.2.3", "1", "sr", "en"))
    assert len(uids) == len(base) + 2


def test_parts_are_not_concatenated_ambiguously() -> None:
    assert derive_uid("ab", "c") != derive_uid("a", "bc")
    assert derive_uid("a", "") != derive_uid("a")


def test_known_value_is_stable_across_releases() -> None:
    """Changing the derivation would give every stored document a new identity on retry."""
    assert derive_uid("study", "1", "en", "sr") == "2.25.70043865210609139305621252848054740265"


@pytest.mark.parametrize("bad", [(), (1,), ("a", None)])
def test_bad_parts_are_rejected(bad) -> None:
    with pytest.raises((TypeError, ValueError)):
        derive_uid(*bad)


def test_the_root_separates_installations() -> None:
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    parts = ("1.2.3", "1", "en", "sr")
    assert derive_uid(*parts, root=first) == derive_uid(*parts, root=uuid.UUID(first))
    assert derive_uid(*parts, root=first) != derive_uid(*parts, root=second)
    assert derive_uid(*parts, root=None) == derive_uid(*parts, root=NAMESPACE) == derive_uid(*parts)
    assert UID.match(derive_uid(*parts, root=first))


def test_presentation_states_take_their_uids_from_the_installation(built) -> None:
    """Same root: the same presentation state UIDs (a retry); another root: none shared."""
    sample = built["CR"].sample
    roots = [str(uuid.uuid4()), str(uuid.uuid4())]

    def uids(root: str) -> set[str]:
        contents = [dataclasses.replace(content_for(sample, lang), uid_root=root) for lang in ("en", "zh")]
        states = build_presentation_states(contents, sample.by_sop_uid)
        return {str(ds.SOPInstanceUID) for ds in states} | {str(ds.SeriesInstanceUID) for ds in states}

    assert uids(roots[0]) == uids(roots[0])
    assert uids(roots[0]) and not uids(roots[0]) & uids(roots[1])
