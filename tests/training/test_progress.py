"""A run's progress (meldflow.training.progress): about 20 log lines a run with the time
left, from rank 0 only, and TensorBoard events beside them."""
import logging

from helpers import tensorboard_events

from meldflow.training.progress import EVENTS_DIR, Progress, _duration


def test_time_left_reads_as_a_person_says_it():
    assert [_duration(s) for s in (7, 75, 3725)] == ["7s", "1m15s", "1h02m"]


def test_rank_0_logs_about_twenty_lines_and_writes_events(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="meldflow"):
        other = Progress(tmp_path / "r1", rank=1, total=100, start_step=0, global_batch=8)
        other.step(50, 0, 1.0, 1e-3)
        main = Progress(tmp_path / "r0", rank=0, total=100, start_step=0, global_batch=8,
                        every_s=3600)
        for step in range(1, 101):
            main.step(step, step // 50, 2.0 - step / 100, 1e-3)
        main.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert len(lines) == 20 and lines[-1].startswith("step 100/100 (epoch 3) loss 1.0000")
    assert " left" in lines[0] and not (tmp_path / "r1").exists()
    assert len(tensorboard_events(tmp_path / "r0").Scalars("train/loss")) == 100
    assert (tmp_path / "r0" / EVENTS_DIR).is_dir()
