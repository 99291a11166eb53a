"""Faster R-CNN's output is unchanged by the two-stage refactor: compare with the outputs pinned before it."""
import torch

from tests.modeling.pinned_faster_rcnn import PIN_FILE, pinned_outputs


def test_faster_rcnn_output_matches_the_pin():
    pinned = torch.load(PIN_FILE, weights_only=True)
    now = pinned_outputs()
    assert now["losses"].keys() == pinned["losses"].keys()
    # The training losses are pinned less tightly than the detections: the pin was made on an AVX512 CPU, and on an
    # AVX2 one (oneDNN's other kernels) the RPN's training-mode proposals differ in the last bits, enough to change
    # one sampled RoI: loss_classifier 0.92964 against the pinned 0.92864 (1.1e-3 relative; every other loss and
    # every detection within 1e-4). A change of the code moves them far more.
    for key, value in pinned["losses"].items():
        torch.testing.assert_close(now["losses"][key], value, rtol=2e-3, atol=1e-5, msg=key)
    assert len(now["detections"]) == len(pinned["detections"]) == 2
    for det, ref in zip(now["detections"], pinned["detections"]):
        assert len(ref["boxes"]) > 10  # a pin with no detections would prove nothing
        torch.testing.assert_close(det["labels"], ref["labels"])
        torch.testing.assert_close(det["scores"], ref["scores"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(det["boxes"], ref["boxes"], rtol=1e-4, atol=1e-3)
