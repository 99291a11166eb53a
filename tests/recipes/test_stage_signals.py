"""A signal in a stage without stop points of its own (R-CNN's store, features, SVMs, box regression) says what is
kept and that --resume continues, as a stopped Trainer does (issue #21 item 5)."""
import logging
import os
import signal
import time

import pytest

from detkit.engine.stages import Stage, run_stages, stage_done, stop_with_message


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_in_a_stage_names_what_is_kept_and_exits_128_plus_the_signal(tmp_path, caplog, signum):
    calls = []

    def fit(folder, resume):
        calls.append(resume)
        (folder / "class_1.npz").write_text("kept")
        if not resume:
            os.kill(os.getpid(), signum)
            time.sleep(5)  # interrupted at once
            raise AssertionError("the signal did not stop the stage")
        return {"done": 1.0}

    stages = [Stage("1_first", lambda folder, resume: {}), Stage("2_svms", fit, "the SVMs of the classes fitted")]
    previous = signal.getsignal(signal.SIGTERM)
    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit) as stop:
        run_stages(stages, tmp_path)
    assert stop.value.code == 128 + signum
    assert f"Stopped by signal {int(signum)} while in stage 2/2 2_svms: the finished stage(s) 1_first and the SVMs " \
           f"of the classes fitted are kept in {tmp_path}; --resume continues from there." in caplog.text
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers put back
    assert (tmp_path / "2_svms" / "class_1.npz").is_file() and not stage_done(tmp_path / "2_svms")
    assert run_stages(stages, tmp_path, resume=True)["2_svms"] == {"done": 1.0}
    assert calls == [False, True]


def test_work_outside_stages_says_what_it_keeps(caplog):
    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit) as stop:
        with stop_with_message("filling the proposal stores", "the proposals of the images done are kept"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert stop.value.code == 143
    assert "Stopped by signal 15 while filling the proposal stores: the proposals of the images done are kept; " \
           "--resume continues from there." in caplog.text


def test_sigterm_while_caching_rcnn_features_keeps_the_images_done(tmp_path, caplog):
    import torch

    from detkit.recipes.rcnn.features import FeatureCache, cache_features
    from tests.recipes.test_rcnn_stages import _CountingModel, _TinySet

    class Terminated(_CountingModel):  # SIGTERM (Slurm's, docker stop's) in the middle of the 4th image
        def region_features(self, features, proposals):
            if self.calls == 3:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            return super().region_features(features, proposals)

    data, cache = _TinySet(), FeatureCache(tmp_path / "3_features" / "cache")

    def features(folder, resume, model=None):
        return cache_features(model or Terminated(), data, cache, torch.device("cpu"), max_proposals=30,
                              progress=False)

    stages = [Stage("3_features", features, "the features of the images cached so far")]
    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit) as stop:
        run_stages(stages, tmp_path)
    assert stop.value.code == 143
    assert "while in stage 1/1 3_features: the features of the images cached so far are kept" in caplog.text
    assert [cache.has(i) for i in range(1, 6)] == [True, True, True, False, False]
    model = _CountingModel()
    resumed = run_stages([Stage("3_features", lambda folder, resume: features(folder, resume, model))], tmp_path,
                         resume=True)
    assert resumed["3_features"] == {"features/computed_images": 2, "features/reused_images": 3}
