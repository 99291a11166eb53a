"""The class list of a run: the name and the COCO category id of every label.

K classes; label k in 1..K (background = 0) names ``names[k - 1]`` and has category id ``category_ids[k - 1]``
(COCO data: the training file's ids; VOC and demo-like data without ids of their own: k). One class list serves a
whole run: it comes from the config (``model.class_names``, ``model.category_ids``) or else from the training set;
every split's labels are renumbered to it by class name (``apply_class_list``), and it is stored with the weights
(``model_final.pth``'s ``meta``, ``last.pth``'s config), so eval.py and infer.py number and name classes the way
the model was trained. A class in the data that is not in the list is an error, or with
``data.unknown_classes=ignore`` its boxes are dropped with a warning.
"""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detkit.data.base import DetectionDataset
from detkit.errors import DetkitError

UNKNOWN_CLASS_POLICIES = ("error", "ignore")


@dataclass(frozen=True)
class ClassList:
    """Class names and COCO category ids, one each per label 1..K, in label order."""

    names: tuple[str, ...]
    category_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.names:
            raise DetkitError("the class list is empty: neither model.class_names nor the training data name a class.")
        if len(self.names) != len(self.category_ids):
            raise DetkitError(f"model.category_ids has {len(self.category_ids)} ids for {len(self.names)} classes "
                              f"{list(self.names)}; give one id per class.")
        for what, items in (("class name", self.names), ("category id", self.category_ids)):
            repeated = sorted({str(x) for x in items if list(items).count(x) > 1})
            if repeated:
                raise DetkitError(f"the class list repeats the {what} {', '.join(repeated)}: {list(items)}.")

    @classmethod
    def make(cls, names: Sequence[str], category_ids: Sequence[int] | None = None) -> ClassList:
        """A class list from names and ids (default 1..K)."""
        ids = range(1, len(names) + 1) if category_ids is None else category_ids
        return cls(tuple(str(n) for n in names), tuple(int(i) for i in ids))

    @classmethod
    def of_dataset(cls, dataset: DetectionDataset) -> ClassList:
        """The dataset's own classes and category ids."""
        return cls.make(dataset.classes, [dataset.label_to_category_id[k] for k in range(1, len(dataset.classes) + 1)])

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None) -> ClassList | None:
        """The class list stored with weights (``as_meta``), or None when there is none."""
        if not meta or not meta.get("class_names"):
            return None
        return cls.make(meta["class_names"], meta.get("category_ids"))

    def __len__(self) -> int:
        return len(self.names)

    @property
    def label_to_category_id(self) -> dict[int, int]:
        """Label k (1..K) -> its COCO category id."""
        return {k + 1: cid for k, cid in enumerate(self.category_ids)}

    def as_meta(self) -> dict[str, list]:
        """Plain values to store with weights: {"class_names": [...], "category_ids": [...]}."""
        return {"class_names": list(self.names), "category_ids": list(self.category_ids)}


def _check_num_classes(num_classes: int | None, classes: ClassList, whence: str) -> None:
    if num_classes is not None and num_classes != len(classes):
        raise DetkitError(f"model.num_classes is {num_classes}, but {whence} has labels up to {len(classes)} "
                          f"({len(classes)} classes: {', '.join(classes.names)}); set model.num_classes="
                          f"{len(classes)} or leave it unset.")


def training_class_list(names: Sequence[str] | None, category_ids: Sequence[int] | None, num_classes: int | None,
                        train_set: DetectionDataset) -> ClassList:
    """The run's class list: model.class_names (else the training set's classes), checked against model.num_classes.

    Category ids: model.category_ids when given; else, for data whose file numbers its categories (COCO), the
    training file's id of each named class (a name the file lacks is an error); else 1..K.
    """
    if names is None:
        own = ClassList.of_dataset(train_set)
        classes = own if category_ids is None else ClassList.make(own.names, category_ids)
        _check_num_classes(num_classes, classes, f"the training data ({source_of(train_set)})")
        return classes
    if category_ids is None and train_set.category_ids_in_file:
        file_ids = {name: train_set.label_to_category_id[k + 1] for k, name in enumerate(train_set.classes)}
        missing = [name for name in names if name not in file_ids]
        if missing:
            raise DetkitError(f"model.class_names names {', '.join(map(repr, missing))}, which the training data "
                              f"({source_of(train_set)}) has no category for; set model.category_ids too.")
        category_ids = [file_ids[name] for name in names]
    classes = ClassList.make(names, category_ids)
    _check_num_classes(num_classes, classes, "model.class_names")
    return classes


def trained_class_list(names: Sequence[str] | None, category_ids: Sequence[int] | None, num_classes: int | None,
                       stored: ClassList | None, weights: str) -> ClassList:
    """The class list a model was trained with: the one stored with its weights; the config's must agree with it.

    Weights without a stored list (a bare state_dict) take model.class_names (or "1".."K" from model.num_classes).
    """
    if stored is None:
        if names is None and not num_classes:
            raise DetkitError(f"{weights} stores no class list and the config names none (model.class_names): "
                              "pass the config.yaml its training run wrote, or set model.class_names.")
        classes = ClassList.make(names if names is not None else [str(k) for k in range(1, num_classes + 1)],
                                 category_ids)
        _check_num_classes(num_classes, classes, "model.class_names")
        return classes
    if names is not None and tuple(names) != stored.names:
        raise DetkitError(f"model.class_names is {list(names)}, but {weights} was trained with classes "
                          f"{list(stored.names)}; leave model.class_names unset to use the weights' classes.")
    if category_ids is not None and tuple(category_ids) != stored.category_ids:
        raise DetkitError(f"model.category_ids is {list(category_ids)}, but {weights} was trained with category "
                          f"ids {list(stored.category_ids)}.")
    _check_num_classes(num_classes, stored, f"{weights}")
    return stored


def source_of(dataset: DetectionDataset) -> str:
    """Where a dataset's annotations come from: a COCO annotation file, or a VOC root and split."""
    if getattr(dataset, "ann_file", None) is not None:
        return str(dataset.ann_file)
    if getattr(dataset, "root", None) is not None:
        return f"{dataset.root} split {getattr(dataset, 'split', '?')}"
    return type(dataset).__name__


def apply_class_list(dataset: DetectionDataset, classes: ClassList, unknown_classes: str = "error",
                     where: str = "data") -> DetectionDataset:
    """Renumber a dataset's labels (in place) to the class list, by class name; return the dataset.

    A class with boxes in the data but not in the list raises a DetkitError naming it, or with
    unknown_classes="ignore" its boxes are dropped with one warning. Afterwards ``dataset.classes`` and
    ``dataset.label_to_category_id`` are the class list's.
    """
    if unknown_classes not in UNKNOWN_CLASS_POLICIES:
        raise DetkitError(f"data.unknown_classes must be one of {', '.join(UNKNOWN_CLASS_POLICIES)}, "
                          f"got {unknown_classes!r}.")
    new_label = {name: k + 1 for k, name in enumerate(classes.names)}
    # old label k -> new label (0: not in the class list)
    table = np.zeros(len(dataset.classes) + 1, dtype=np.int64)
    for k, name in enumerate(dataset.classes):
        table[k + 1] = new_label.get(name, 0)
    unknown: dict[str, list] = {}  # name -> [box count, first file]
    records = []
    for record in dataset.records:
        labels = table[record.labels]
        for old in record.labels[labels == 0].tolist():
            entry = unknown.setdefault(dataset.classes[old - 1], [0, record.path])
            entry[0] += 1
        keep = labels > 0
        records.append(dataclasses.replace(
            record, boxes=record.boxes[keep], labels=labels[keep], ignore=record.ignore[keep],
            areas=None if record.areas is None else record.areas[keep]))
    if unknown:
        found = "; ".join(f"'{name}' ({count} boxes, first in {path})" for name, (count, path) in unknown.items())
        if unknown_classes == "error":
            raise DetkitError(f"{where} ({source_of(dataset)}) has classes that are not in the run's class list "
                              f"{list(classes.names)}: {found}. Add them to model.class_names, or set "
                              "data.unknown_classes=ignore to drop their boxes.")
        warnings.warn(f"{where} ({source_of(dataset)}): dropped the boxes of classes not in the class list "
                      f"{list(classes.names)}: {found} (data.unknown_classes=ignore).", stacklevel=2)
    dataset.records = records
    dataset.classes = list(classes.names)
    dataset.label_to_category_id = classes.label_to_category_id
    return dataset
