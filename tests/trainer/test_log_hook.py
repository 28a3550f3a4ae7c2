"""The log hook: a time-stamped folder per run with log.txt and PNG/PDF plots of the metrics."""

from __future__ import annotations

import re

import pytest

from tests.trainer.toy import make_trainer

pytestmark = pytest.mark.timeout(90)


def test_each_run_writes_log_and_plots_into_its_own_folder(tmp_path):
    out = tmp_path / "runs"
    first = make_trainer(out_dir=str(out), log_freq=2, max_epoch=2, valid_freq=3)
    first.run()
    second = make_trainer(out_dir=str(out), log_freq=2, max_epoch=1, valid_freq=3)
    second.run()

    folders = sorted(p for p in out.iterdir())
    assert len(folders) == 2, "two runs in the same second must not share a folder"
    for folder in folders:
        assert re.fullmatch(r"\d{4}_\d\d_\d\d_\d\d_\d\d_\d\d(_\d+)?", folder.name)
        names = sorted(p.name for p in folder.iterdir())
        assert names == ["log.txt", "train_metrics.pdf", "train_metrics.png",
                         "valid_metrics.pdf", "valid_metrics.png"]
        assert (folder / "train_metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (folder / "valid_metrics.pdf").read_bytes()[:5] == b"%PDF-"
        assert (folder / "valid_metrics.png").stat().st_size > 5000  # something was drawn

    log = (folders[0] / "log.txt").read_text()
    assert "start: model Sequential" in log
    assert len(re.findall(r"epoch \d iter \d+: train_loss=", log)) == 6  # every 2nd of 12
    valid_lines = re.findall(r"iter (\d+): validation valid_loss=\S+ valid_acc=(\S+)", log)
    assert [int(i) for i, _ in valid_lines] == [2, 5, 8, 11]
    assert float(valid_lines[-1][1]) == pytest.approx(first.history.values("valid_acc")[-1],
                                                      rel=1e-5)
    assert re.search(r"end: completed after 12 iterations", log)


def test_tag_names_the_folder_and_a_failed_run_still_gets_its_log(tmp_path):
    trainer = make_trainer(out_dir=str(tmp_path), valid_freq=0)
    trainer.log_hook.tag = "trial7"

    def broken(batch):
        raise ValueError("bad batch")

    trainer.train_one_iter = broken
    with pytest.raises(ValueError):
        trainer.run()
    (folder,) = tmp_path.iterdir()
    assert folder.name.endswith("_trial7")
    assert "end: failed after 0 iterations" in (folder / "log.txt").read_text()
