"""Odd and malicious files in an image folder: CMYK, 16-bit and palette-with-alpha images decode
to the right pixels; zero-byte, truncated and decompression-bomb files are refused by name in one
line (or skipped with data.bad_images=skip), and the image folder is never changed."""

import numpy as np
import pytest
from PIL import Image

from cnnlab.data.folder_loader import ImageView, decode_view
from tests.folder_helpers import make_image_folder
from tests.helpers import cli, files_below

FOLDER_RUN = [
    "data.name=folder",
    "data.image_size=32",
    "data.workers=0",
    "model.name=resnet20",
    "model.base_width=4",
    "train.epochs=1",
    "train.batch_size=8",
    "train.eval_batch_size=16",
    "train.precision=fp32",
    "train.channels_last=false",
    "train.device=cpu",
    "eval.tta=none",
]
VIEW = ImageView(image_size=16, eval_resize=16, random_crop=False)
PIXELS = np.random.default_rng(0).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)


def _odd_but_valid(folder):
    """Write a CMYK JPEG, a 16-bit grayscale PNG and a palette PNG with transparency."""
    Image.fromarray(PIXELS).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    ramp = np.arange(256, dtype=np.uint16).reshape(16, 16) * 257  # 0..65535
    Image.fromarray(ramp).save(folder / "gray16.png")
    palette = Image.fromarray(PIXELS).convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.save(folder / "palette_alpha.png", transparency=0)


def _bad(folder):
    """Write the files that must be refused; return {file name: what the refusal says}."""
    (folder / "zero.png").write_bytes(b"")
    Image.fromarray(PIXELS).save(folder / "whole.png")
    data = (folder / "whole.png").read_bytes()
    (folder / "whole.png").unlink()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    # 100 M pixels in 12 kB: above Pillow's limit (89.5 M), below the 2x at which Pillow itself
    # stops warning and refuses.
    Image.new("1", (10_000, 10_000)).save(folder / "bomb.png")
    return {
        "zero.png": "empty file (0 bytes)",
        "truncated.png": "image file is truncated",
        "bomb.png": "refused as a possible decompression bomb",
    }


def test_cmyk_16_bit_and_palette_with_alpha_decode_to_the_right_pixels(tmp_path):
    _odd_but_valid(tmp_path)
    cmyk = decode_view(str(tmp_path / "cmyk.jpg"), VIEW, None).astype(int)
    assert np.abs(cmyk - PIXELS).mean() < 8  # JPEG's loss only
    gray = decode_view(str(tmp_path / "gray16.png"), VIEW, None)
    # The top 8 bits: a ramp 0..255, not the white square that clipping 16-bit values gives.
    assert gray[..., 0].ravel().tolist() == list(range(256))
    palette = decode_view(str(tmp_path / "palette_alpha.png"), VIEW, None).astype(int)
    assert np.abs(palette - PIXELS).mean() < 40  # 16 colours


def test_16_bit_off_the_8_bit_grid_and_float_images_decode_to_their_scaled_values(tmp_path):
    ramp = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257 + 200).clip(0, 65535)
    Image.fromarray(ramp).save(tmp_path / "gray16.png")
    gray = decode_view(str(tmp_path / "gray16.png"), VIEW, None)[..., 0]
    assert (gray.astype(int) == ramp.astype(int) >> 8).all()
    level = np.linspace(-0.5, 1.5, 256, dtype=np.float32).reshape(16, 16)  # clipped to [0, 1]
    Image.fromarray(level, mode="F").save(tmp_path / "float.tif")
    got = decode_view(str(tmp_path / "float.tif"), VIEW, None)[..., 0]
    assert (got == np.rint(level.astype(np.float64).clip(0, 1) * 255)).all()


@pytest.mark.parametrize("name", ["zero.png", "truncated.png", "bomb.png"])
def test_a_zero_byte_truncated_or_bomb_image_is_one_clear_line(tmp_path, capsys, name):
    root = make_image_folder(tmp_path / "images", per_class=4, val_per_class=2, corrupt=False)
    says = _bad(tmp_path)[name]
    (tmp_path / name).rename(root / "train" / "red" / name)
    before = files_below(root)
    assert cli("train", "--out", str(tmp_path / "run"), *FOLDER_RUN, f"data.root={root}") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"{root / 'train' / 'red' / name}: cannot read this image" in err and says in err
    assert files_below(root) == before


def test_with_bad_images_skip_every_hostile_file_is_skipped_and_the_odd_ones_train(
    tmp_path, capsys
):
    root = make_image_folder(tmp_path / "images", per_class=4, val_per_class=2, corrupt=False)
    _odd_but_valid(root / "train" / "red")
    bad = _bad(root / "train" / "blue")
    run = tmp_path / "run"
    args = [*FOLDER_RUN, f"data.root={root}", "data.bad_images=skip"]
    assert cli("train", "--out", str(run), *args) == 0
    log = (run / "log.txt").read_text()
    for name, says in bad.items():
        assert f"skipped unreadable image {root / 'train' / 'blue' / name} (" in log
        assert says in log
    assert log.count("skipped unreadable image") == len(bad)  # the odd but valid ones train
