import pytest

from detkit.data import DEMO_CLASSES, build_dataset
from detkit.data.coco import COCODataset
from detkit.data.voc import VOCDataset
from detkit.errors import DetkitError

pytestmark = pytest.mark.filterwarnings("ignore:.*zero-area or inverted")


def test_voc_and_coco_configs_build_their_datasets(tiny_voc, tiny_coco):
    voc = build_dataset("voc", str(tiny_voc), "train", None, train=True)
    assert isinstance(voc, VOCDataset) and len(voc) == 2
    image_dir, ann_file = tiny_coco
    coco = build_dataset("coco", str(image_dir.parent), image_dir.name, ann_file.name, train=False)
    assert isinstance(coco, COCODataset) and coco.image_ids == [11, 5]


def test_bad_data_config_values_are_named():
    with pytest.raises(DetkitError, match="Unknown data format 'yolo'"):
        build_dataset("yolo", "/data", None, None, train=True)
    with pytest.raises(DetkitError, match="needs a root"):
        build_dataset("voc", None, "trainval", None, train=True)
    with pytest.raises(DetkitError, match="needs an ann_file"):
        build_dataset("coco", "/data", "train2017", None, train=True)


def test_demo_format_generates_the_default_demo_set_once(tmp_path):
    train = build_dataset("demo", None, None, None, train=True, demo_cache=str(tmp_path))
    test = build_dataset("demo", "ignored", "test", None, train=False, demo_cache=str(tmp_path))
    assert (len(train), len(test)) == (600, 100) and train.classes == DEMO_CLASSES
    with pytest.raises(DetkitError, match="split 'val'"):
        build_dataset("demo", None, "val", None, train=False, demo_cache=str(tmp_path))
