"""Pictures a run writes: the val curve names both of its axes."""

from __future__ import annotations

from PIL import Image, ImageChops

from purer.pictures import save_curve


def test_val_curve_labels_its_x_axis(tmp_path):
    steps, accs = [50, 100, 150, 200], [60.0, 70.0, 72.0, 71.0]
    plain = save_curve(steps, accs, tmp_path / "plain.png", ylabel="acc %")
    labelled = save_curve(steps, accs, tmp_path / "labelled.png", ylabel="acc %",
                          xlabel="outer step")
    with Image.open(plain) as a, Image.open(labelled) as b:
        box = ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getbbox()
        height = a.height
    assert box is not None  # the label is drawn ...
    assert box[1] > height - 30  # ... below the axis and its tick labels


def test_reference_line_is_drawn_in_red_at_its_value(tmp_path):
    minutes, accs = [5.0, 10.0, 20.0], [30.0, 34.0, 36.0]
    path = save_curve(minutes, accs, tmp_path / "target.png", reference=40.0)
    with Image.open(path) as picture:
        rgb = picture.convert("RGB")
        red_rows = {y for y in range(rgb.height) for x in range(60, rgb.width - 20, 3)
                    if rgb.getpixel((x, y)) == (214, 39, 40)}
    # the target lies above every point: the axis stretches to it, so it is the top row
    assert red_rows == {28}
