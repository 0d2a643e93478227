"""Progress off a terminal (logs, CI, nohup): whole lines, no rich markup, the
time spent and left on every line, counts that agree with the lines above them."""

from __future__ import annotations

import io

import pytest

from purer.progress import _PlainProgress, clock, console
from purer.testing import build_tiny_zoo


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def plain(every_s: float = 0.0) -> tuple[_PlainProgress, io.StringIO, FakeClock]:
    out, now = io.StringIO(), FakeClock()
    return _PlainProgress(every_s=every_s, stream=out, now=now), out, now


def test_plain_lines_strip_markup_and_report_counts():
    bar, out, now = plain()
    task = bar.add_task("meta-train", total=10, status="")
    now.t += 12
    bar.update(task, completed=10, status="loss 1.2 switch [red]on[/]")
    assert out.getvalue().strip() == "meta-train: 10/10 elapsed 0:12 eta 0:00 | loss 1.2 switch on"


def test_every_plain_line_has_elapsed_time_and_an_eta():
    bar, out, now = plain()
    task = bar.add_task("evaluation", total=600, status="")
    now.t += 30
    bar.update(task, advance=100, status="acc 70.00%")
    now.t += 3600
    bar.update(task, advance=100)
    first, second = out.getvalue().splitlines()
    # 100 tasks in 30 s: 500 left take 150 s
    assert first == "evaluation: 100/600 elapsed 0:30 eta 2:30 | acc 70.00%"
    assert second.startswith("evaluation: 200/600 elapsed 1:00:30 eta ")


def test_a_resumed_loop_estimates_from_its_own_pace():
    bar, out, now = plain()
    task = bar.add_task("meta-train", total=200, completed=100, status="")
    now.t += 10
    bar.update(task, completed=110)
    assert "eta 1:30" in out.getvalue()  # 10 steps in 10 s, 90 left


def test_the_eta_leaves_out_the_warm_up_of_the_first_update():
    # a first step that compiled for 60 s must not make 2,000 steps look like hours
    bar, out, now = plain()
    task = bar.add_task("meta-train", total=2000, status="")
    now.t += 60
    bar.update(task, completed=1)
    now.t += 10
    bar.update(task, completed=21)  # then 20 steps in 10 s: 1,979 left take 989.5 s
    assert out.getvalue().splitlines()[-1] == "meta-train: 21/2000 elapsed 1:10 eta 16:30"


def test_reset_restarts_the_count_and_the_clock():
    bar, out, now = plain()
    task = bar.add_task("epochs", total=4, status="t000")
    now.t += 100
    bar.update(task, completed=4)
    bar.reset(task, total=4, status="t001")
    now.t += 5
    bar.update(task, completed=1)
    assert out.getvalue().splitlines()[-1] == "epochs: 1/4 elapsed 0:05 eta 0:15 | t001"


def test_each_task_keeps_its_own_pace_of_lines():
    # a chatty inner task must not hide the outer task's lines
    bar, out, now = plain(every_s=5.0)
    outer = bar.add_task("teachers", total=3, status="")
    inner = bar.add_task("epochs", total=4, status="")
    bar.update(inner, completed=1)
    bar.update(outer, completed=1)
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["epochs", "teachers"]


def test_clock_writes_minutes_and_hours():
    assert (clock(0), clock(75), clock(3600 + 62)) == ("0:00", "1:15", "1:01:02")


def test_console_does_not_wrap_long_lines_off_a_terminal(capsys):
    assert not console.is_terminal  # pytest captures stderr
    words = " ".join(f"word{i}" for i in range(60))  # far wider than 80 columns
    console.print(words, highlight=False)
    assert capsys.readouterr().err == words + "\n"


@pytest.mark.slow
def test_teacher_count_follows_the_teachers_line(tmp_path, capsys):
    build_tiny_zoo(tmp_path / "zoo", teachers=2)
    lines = capsys.readouterr().err.splitlines()
    last_teacher = max(i for i, line in enumerate(lines) if line.startswith("t001:"))
    done = next(i for i, line in enumerate(lines) if line.startswith("teachers: 2/2"))
    assert done > last_teacher
    assert "elapsed" in lines[done] and "eta 0:00" in lines[done]


def test_cli_silences_pytorchs_cuda_runtime_warning(caplog):
    import logging

    from purer.runtime import quiet_warnings

    quiet_warnings()
    with caplog.at_level(logging.WARNING):
        logging.getLogger("torch.utils.cpp_extension").warning(
            "No CUDA runtime is found, using CUDA_HOME='/usr/local'")
    assert "No CUDA runtime" not in caplog.text
