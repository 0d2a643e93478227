"""Plain progress lines (logs, CI): readable text, no rich markup."""

from purer.progress import _PlainProgress


def test_plain_lines_strip_markup_and_report_counts(capsys):
    bar = _PlainProgress(every_s=0.0)
    task = bar.add_task("meta-train", total=10, status="")
    bar.update(task, completed=10, status="loss 1.2 switch [red]on[/]")
    line = capsys.readouterr().err.strip()
    assert line == "meta-train: 10/10 status=loss 1.2 switch on"
