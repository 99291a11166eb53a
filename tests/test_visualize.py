import cv2
import pytest
import torch

from detkit.errors import DetkitError
from detkit.visualize import class_color, draw_detections, draw_grid, save_image


def gray_image() -> torch.Tensor:
    return torch.full((3, 60, 80), 0.5)


def test_box_outline_is_drawn_in_the_class_colour_and_rest_is_untouched():
    boxes = torch.tensor([[10.0, 10.0, 50.0, 40.0]])
    drawn = draw_detections(gray_image(), boxes, torch.tensor([2]), torch.tensor([0.93]), class_names=["RBC", "WBC"])
    assert drawn.dtype == torch.uint8 and drawn.shape == (3, 60, 80)
    assert drawn[:, 25, 10].tolist() == list(class_color(2))  # left edge of the box
    assert drawn[:, 25, 30].tolist() == [128, 128, 128]  # inside, away from edges and caption
    assert drawn[:, 55, 75].tolist() == [128, 128, 128]  # outside


def test_boxes_below_score_threshold_are_not_drawn():
    image = gray_image()
    drawn = draw_detections(image, torch.tensor([[10.0, 10.0, 50.0, 40.0]]), torch.tensor([1]), torch.tensor([0.2]),
                            score_thresh=0.5)
    assert torch.equal(drawn, torch.full((3, 60, 80), 128, dtype=torch.uint8))


def test_class_colours_are_stable_and_distinct():
    assert class_color(3) == class_color(3)
    assert len({class_color(label) for label in range(1, 21)}) == 20


def test_save_image_writes_png_and_jpg_that_read_back(tmp_path):
    drawn = draw_detections(gray_image(), torch.tensor([[5.0, 5.0, 30.0, 30.0]]), torch.tensor([1]))
    save_image(drawn, tmp_path / "out" / "det.png")
    save_image(drawn, tmp_path / "det.jpg")
    png = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / "det.png")), cv2.COLOR_BGR2RGB)
    assert torch.equal(torch.from_numpy(png).permute(2, 0, 1), drawn)
    assert cv2.imread(str(tmp_path / "det.jpg")).shape == (60, 80, 3)
    with pytest.raises(DetkitError, match="det.bmp"):
        save_image(drawn, tmp_path / "det.bmp")


def test_draw_grid_tiles_images_of_different_sizes():
    grid = draw_grid([torch.zeros(3, 20, 30), torch.zeros(1, 10, 10, dtype=torch.uint8)], nrow=2, padding=2)
    assert grid.shape == (3, 20 + 2 * 2, 2 * 30 + 3 * 2) and grid.dtype == torch.uint8


def test_unknown_label_name_is_reported():
    with pytest.raises(DetkitError, match="Label 3 has no name"):
        draw_detections(gray_image(), torch.zeros(1, 4), torch.tensor([3]), class_names=["RBC", "WBC"])
