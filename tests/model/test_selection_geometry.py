"""Image/slice selection and box geometry."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from common.settings import ModelSettings
from model.geometry import box_to_pixels, iou, match_boxes
from model.selection import SourceImage, is_image, select, select_images, slice_positions, view_of

CT = "1.2.840.10008.5.1.4.1.1.2"


def img(uid: str, *, series: str = "s1", modality: str = "CT", sop_class: str = CT, number: int | None = 1,
        position: list[float] | None = None, orientation: list[float] | None = None, frames: int | None = None,
        rows: int | None = 512) -> SourceImage:
    return SourceImage(Path(f"/spool/{uid}.dcm"), uid, sop_class, series, modality, None, rows, rows, frames,
                       number, position, orientation)


def axial_volume(n: int, *, series: str = "s1", shuffle: bool = True) -> list[SourceImage]:
    images = [img(f"z{i}", series=series, number=n - i, position=[0.0, 0.0, 5.0 * i], orientation=[1, 0, 0, 0, 1, 0]) for i in range(n)]
    if shuffle:
        random.Random(3).shuffle(images)
    return images


def test_slices_are_spread_along_the_normal_not_instance_number() -> None:
    choices = select_images(axial_volume(30), ModelSettings(slices_per_volume=3))
    assert [c.image.sop_instance_uid for c in choices] == ["z5", "z15", "z25"]
    assert all("position along the slice normal" in c.reason for c in choices)
    assert "slice 6 of 30 at 25.0 mm" in choices[0].reason


def test_oblique_orientation_uses_the_cross_product() -> None:
    # Sagittal-ish: rows along y, columns along z; normal along -x.
    iop = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    images = [img(f"x{i}", number=i, position=[-3.0 * i, 7.0, 9.0], orientation=iop) for i in range(10)]
    positions = slice_positions(images)
    assert positions == pytest.approx([3.0 * i for i in range(10)])
    choices = select_images(images, ModelSettings(slices_per_volume=1))
    assert [c.image.sop_instance_uid for c in choices] == ["x5"]


def test_localizer_in_another_orientation_is_left_out() -> None:
    images = axial_volume(9) + [img("loc", number=0, position=[0, 0, 0], orientation=[0.0, 1.0, 0.0, 0.0, 0.0, -1.0])]
    selection = select(images, ModelSettings(slices_per_volume=9))
    assert "loc" not in {c.image.sop_instance_uid for c in selection.chosen}
    assert [(d.image and d.image.sop_instance_uid, "another orientation" in d.reason)
            for d in selection.excluded] == [("loc", True)]


def test_dicom_semantics_exclusions_and_their_switches() -> None:
    sc = "1.2.840.10008.5.1.4.1.1.7"
    images = axial_volume(6) + [
        img("scout1", series="sc", number=1, position=[0, 0, 0], orientation=[1, 0, 0, 0, 1, 0]),
        img("dose", series="d", modality="CT", sop_class=sc),
    ]
    images.append(SourceImage(**{**img("mip", series="m").__dict__, "image_type": ("DERIVED", "SECONDARY", "MIP"), "header_read": True}))
    images.append(SourceImage(**{**img("topo", series="t").__dict__, "image_type": ("ORIGINAL", "PRIMARY", "LOCALIZER"), "header_read": True}))
    images.append(SourceImage(**{**img("burn", series="b", modality="CR", sop_class="1.2.840.10008.5.1.4.1.1.1").__dict__,
                                 "burned_in_annotation": "YES", "header_read": True}))
    strict = select(images, ModelSettings(slices_per_volume=2))
    reasons = {d.image.sop_instance_uid: d.reason for d in strict.excluded if d.image is not None}
    assert set(reasons) == {"scout1", "dose", "mip", "topo", "burn"}
    assert "fewer than model.min_volume_slices = 3" in reasons["scout1"]
    assert "Secondary Capture" in reasons["dose"] and "dose sheet" in reasons["dose"]
    assert "DERIVED\\SECONDARY\\MIP" in reasons["mip"]
    assert "LOCALIZER" in reasons["topo"] and "Burned In Annotation YES" in reasons["burn"]
    assert any(d.image is None and d.reason.startswith("4 of 6 slices not sent") for d in strict.excluded)
    lenient = select(images, ModelSettings(slices_per_volume=2, exclude_localizers=False, exclude_secondary_capture=False,
                                           original_primary_only=False, exclude_burned_in_annotation=False))
    assert {"scout1", "dose", "mip", "topo", "burn"} <= {c.image.sop_instance_uid for c in lenient.chosen}


@pytest.mark.parametrize(
    ("view_position", "orientation", "view"),
    [("PA", None, "frontal"), ("AP", ("P", "F"), "frontal"), ("LL", None, "lateral"), ("RL", None, "lateral"),
     ("LLD", None, "other"), (None, ("L", "F"), "frontal"), (None, ("RL", "FH"), "frontal"), (None, ("A", "F"), "lateral"),
     (None, ("P", "FH"), "lateral"), (None, None, "frontal")],
)
def test_view_of_chest_films(view_position, orientation, view) -> None:
    image = SourceImage(**{**img("x", modality="DX").__dict__, "view_position": view_position,
                           "patient_orientation": orientation, "header_read": True})
    assert view_of(image)[0] == view


def test_missing_geometry_falls_back_to_instance_number() -> None:
    images = [img(f"n{i}", number=i + 1) for i in range(6)]
    choices = select_images(images, ModelSettings(slices_per_volume=2))
    assert [c.image.sop_instance_uid for c in choices] == ["n1", "n4"]
    assert "Instance Number" in choices[0].reason


def test_enhanced_multi_frame_volume_gives_frames() -> None:
    choices = select_images([img("e", frames=100)], ModelSettings(slices_per_volume=4))
    assert [c.frame_number for c in choices] == [13, 38, 63, 88]


def test_projection_images_each_and_middle_frame_of_a_cine() -> None:
    us = "1.2.840.10008.5.1.4.1.1.3.1"
    cr = "1.2.840.10008.5.1.4.1.1.1"
    images = [img("cine", series="u", modality="US", sop_class=us, frames=31),
              img("pa", series="c", modality="CR", sop_class=cr, number=1),
              img("lat", series="c", modality="CR", sop_class=cr, number=2)]
    choices = select_images(images, ModelSettings())
    assert [(c.image.sop_instance_uid, c.frame_number) for c in choices] == [("cine", 16), ("pa", None), ("lat", None)]


@pytest.mark.parametrize(
    ("sop_class", "modality", "expected"),
    [
        ("1.2.840.10008.5.1.4.1.1.88.22", "SR", False),  # Enhanced SR
        ("1.2.840.10008.5.1.4.1.1.11.1", "PR", False),  # Grayscale Softcopy Presentation State
        ("1.2.840.10008.5.1.4.1.1.88.59", "KO", False),  # Key Object Selection
        ("1.2.840.10008.5.1.4.1.1.66.4", "SEG", False),  # Segmentation
        ("1.2.840.10008.5.1.4.1.1.104.1", "DOC", False),  # Encapsulated PDF
        ("1.2.840.10008.5.1.4.1.1.1.1.1", "DX", False),  # DX For Processing
        ("1.2.840.10008.5.1.4.1.1.1.1", "DX", True),  # DX For Presentation
        ("1.2.840.10008.5.1.4.1.1.77.1.5.1", "OP", True),  # Ophthalmic Photography 8 Bit
        ("1.2.840.10008.5.1.4.1.1.77.1.6", "SM", True),  # VL Whole Slide Microscopy
        ("1.2.840.10008.5.1.4.1.1.7", "OT", True),  # Secondary Capture
        ("1.2.3.4.5.6.7", "XC", True),  # private class, image modality
        ("1.2.3.4.5.6.7", "SR", False),
    ],
)
def test_non_image_objects_are_skipped(sop_class: str, modality: str, expected: bool) -> None:
    assert is_image(img("a", modality=modality, sop_class=sop_class)) is expected


def test_bounded_work_round_robin_over_series() -> None:
    images = axial_volume(20, series="a") + [img(f"b{i}", series="b", modality="CR", sop_class="1.2.840.10008.5.1.4.1.1.1", number=i) for i in range(10)]
    choices = select_images(images, ModelSettings(slices_per_volume=3, max_images_per_study=4))
    series = [c.image.series_instance_uid for c in choices]
    assert len(choices) == 4 and series.count("a") == 2 and series.count("b") == 2


def test_box_to_pixels_maps_and_clips() -> None:
    assert box_to_pixels((0, 0, 999, 999), rows=480, columns=640) == (0.0, 0.0, 640.0, 480.0)
    x1, y1, x2, y2 = box_to_pixels((365, 293, 416, 598), rows=432, columns=432)
    assert (x1, y1, x2, y2) == pytest.approx((365 / 999 * 432, 293 / 999 * 432, 416 / 999 * 432, 598 / 999 * 432))
    assert box_to_pixels((500, 600, 100, 1200), rows=100, columns=200) == pytest.approx((100 / 999 * 200, 60.06006, 500 / 999 * 200, 100.0))
    with pytest.raises(ValueError):
        box_to_pixels((0, 0, 1, 1), rows=0, columns=10)


@given(st.tuples(*[st.integers(0, 999)] * 4), st.integers(1, 5000), st.integers(1, 5000))
def test_pixels_always_inside_the_image(box, rows, columns) -> None:
    x1, y1, x2, y2 = box_to_pixels(box, rows, columns)
    assert 0 <= x1 <= x2 <= columns and 0 <= y1 <= y2 <= rows


def test_iou_and_matching() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    en = [(0, 0, 10, 10), (100, 100, 200, 200), (50, 50, 60, 60)]
    zh = [(101, 99, 199, 201), (1, 0, 10, 11), (300, 300, 310, 310)]
    assert match_boxes(en, zh) == [(0, 1), (1, 0)]
    assert match_boxes(en, zh, threshold=0.99) == []
