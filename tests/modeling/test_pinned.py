"""Faster R-CNN's output is unchanged by the two-stage refactor: compare with the outputs pinned before it."""
import torch

from tests.modeling.pinned_faster_rcnn import PIN_FILE, pinned_outputs


def test_faster_rcnn_output_matches_the_pin():
    pinned = torch.load(PIN_FILE, weights_only=True)
    now = pinned_outputs()
    assert now["losses"].keys() == pinned["losses"].keys()
    for key, value in pinned["losses"].items():
        torch.testing.assert_close(now["losses"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert len(now["detections"]) == len(pinned["detections"]) == 2
    for det, ref in zip(now["detections"], pinned["detections"]):
        assert len(ref["boxes"]) > 10  # a pin with no detections would prove nothing
        torch.testing.assert_close(det["labels"], ref["labels"])
        torch.testing.assert_close(det["scores"], ref["scores"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(det["boxes"], ref["boxes"], rtol=1e-4, atol=1e-3)
