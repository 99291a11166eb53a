"""With tensorboard installed (the `tensorboard` extra), the report's AP per class and PR curves go there too."""
import pytest

from detkit.evaluation.per_class import class_report
from detkit.report.run import write_tensorboard


def test_ap_per_class_and_pr_curves_are_in_the_tensorboard_log(report_inputs, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install -e '.[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert write_tensorboard(report_inputs, tmp_path, step=29)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    report = class_report(report_inputs.ground_truth, report_inputs.results)
    for name, ap in zip(report.names, report.table["AP"]):
        (scalar,) = events.Scalars(f"eval/AP-{name}")
        assert scalar.step == 29 and scalar.value == pytest.approx(ap, rel=1e-6)
    assert {"eval/pr_curves", "eval/ap_per_class"} <= set(events.Tags()["images"])
