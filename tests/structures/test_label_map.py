"""LabelMap: labels 1..K -> data set category ids and names, and how a detector's map reads a data set's."""

import pytest

from detkit.structures.label_map import LabelMap, LabelMapMismatchError

TRAINED = LabelMap((3, 7, 12), ("disk", "square", "triangle"))


def test_from_categories_orders_labels_by_category_id():
    cats = [{"id": 12, "name": "triangle"}, {"id": 3, "name": "disk"}, {"id": 7, "name": "square"}]
    label_map = LabelMap.from_categories(cats)
    assert label_map == TRAINED
    assert label_map.label_to_category_id == {1: 3, 2: 7, 3: 12}
    assert len(label_map) == 3


def test_from_label_to_category_id_with_and_without_names():
    assert LabelMap.from_label_to_category_id({2: 7, 1: 3, 3: 12}, ["disk", "square", "triangle"]) == TRAINED
    assert LabelMap.from_label_to_category_id({"1": 5, "2": 9}, None) == LabelMap((5, 9), ("5", "9"))
    with pytest.raises(ValueError, match=r"labels must be 1..2, got \[1, 3\]"):
        LabelMap.from_label_to_category_id({1: 5, 3: 9}, None)
    with pytest.raises(ValueError, match="2 labels but 3 class names"):
        LabelMap.from_label_to_category_id({1: 5, 2: 9}, ["a", "b", "c"])


def test_invalid_maps_are_refused():
    with pytest.raises(ValueError, match="2 category ids but 1 names"):
        LabelMap((1, 2), ("a",))
    with pytest.raises(ValueError, match=r"repeated category ids \[4, 4\]"):
        LabelMap((4, 4), ("a", "b"))


def test_describe_lists_id_and_name_in_label_order():
    assert TRAINED.describe() == "{3: disk, 7: square, 12: triangle}"


def test_equal_maps_reconcile_to_none():
    assert TRAINED.reconcile(LabelMap((3, 7, 12), ("disk", "square", "triangle"))) is None


def test_same_names_other_ids_keep_the_label_order_with_the_data_ids():
    # the data numbers the classes 1: triangle, 5: disk, 9: square (its own labels: triangle, disk, square)
    data = LabelMap((1, 5, 9), ("triangle", "disk", "square"))
    mapped = TRAINED.reconcile(data)
    assert mapped == LabelMap((5, 9, 1), ("disk", "square", "triangle"))
    assert mapped.label_to_category_id == {1: 5, 2: 9, 3: 1}


def test_other_classes_are_a_one_line_error_with_both_maps():
    data = LabelMap((2, 3, 7), ("star", "disk", "square"))  # 12: triangle became 2: star
    with pytest.raises(LabelMapMismatchError) as e:
        TRAINED.reconcile(data, what="val.json")
    text = str(e.value)
    assert "\n" not in text
    assert "{3: disk, 7: square, 12: triangle}" in text
    assert "val.json's categories {2: star, 3: disk, 7: square}" in text
    assert "--model.weights" in text
    with pytest.raises(LabelMapMismatchError, match="the data's categories"):
        TRAINED.reconcile(LabelMap((3, 7), ("disk", "square")))  # fewer classes
