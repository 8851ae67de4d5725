import io

import numpy as np
import pytest
from PIL import Image

from cxr_fhir.imaging import ImageRejected, load
from support.images import chest_like, encode, png8


def test_png8_decodes_to_unit_range():
    image = load(png8())
    assert image.media_type == "image/png" and image.bits == 8
    assert image.pixels.dtype == np.float32 and image.pixels.shape == (256, 256)
    assert 0.0 <= image.pixels.min() < image.pixels.max() <= 1.0


def test_png16_uses_its_value_range():
    arr = (chest_like() * 4095).astype(np.uint16)  # 12-bit detector data in a 16-bit PNG
    image = load(encode(arr))
    assert image.bits == 16
    assert image.pixels.min() == pytest.approx(0.0) and image.pixels.max() == pytest.approx(1.0)


def test_jpeg_and_grey_rgb_are_accepted():
    grey = (chest_like() * 255).astype(np.uint8)
    assert load(encode(grey, "JPEG")).media_type == "image/jpeg"
    rgb = np.repeat(grey[..., None], 3, axis=2)
    np.testing.assert_allclose(load(encode(rgb)).pixels, grey / 255.0, atol=1e-6)


def test_extension_is_not_trusted_content_is():
    with pytest.raises(ImageRejected) as err:
        load(b"GIF89a" + b"\x00" * 500)
    assert err.value.code == "not-an-image"


@pytest.mark.parametrize("data,code", [
    (b"", "empty"),
    (b"%PDF-1.7 not an image", "not-an-image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt"),
])
def test_rejections_name_the_problem(data, code):
    with pytest.raises(ImageRejected) as err:
        load(data)
    assert err.value.code == code and err.value.reason


def test_truncated_file_is_corrupt():
    big = encode((np.random.default_rng(0).random((512, 512)) * 255).astype(np.uint8))
    with pytest.raises(ImageRejected) as err:
        load(big[: len(big) // 2])
    assert err.value.code == "corrupt"


def test_colour_photograph_is_refused():
    rgb = np.zeros((256, 256, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 120, 40
    rgb[::2] = 10
    with pytest.raises(ImageRejected) as err:
        load(encode(rgb))
    assert err.value.code == "colour-photograph"


def test_too_small_blank_and_odd_shapes():
    with pytest.raises(ImageRejected) as err:
        load(encode((chest_like(100) * 255).astype(np.uint8)))
    assert err.value.code == "too-small"
    with pytest.raises(ImageRejected) as err:
        load(encode(np.full((256, 256), 128, np.uint8)))
    assert err.value.code == "blank"
    with pytest.raises(ImageRejected) as err:
        load(encode((np.random.default_rng(1).random((200, 900)) * 255).astype(np.uint8)))
    assert err.value.code == "not-a-chest-radiograph"


def test_decompression_bomb_is_refused_from_the_header():
    # 12000 x 12000 one-bit pixels: a few KB on disk, 144 megapixels once decoded.
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 100_000
    with pytest.raises(ImageRejected) as err:
        load(buf.getvalue())
    assert err.value.code == "too-large"


def test_animated_png_is_refused():
    frames = [Image.fromarray((chest_like() * k * 255).astype(np.uint8)) for k in (0.5, 1.0)]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageRejected) as err:
        load(buf.getvalue())
    assert err.value.code == "multi-frame"


def test_colour_photograph_in_a_palette_png_is_refused_too():
    rgb = np.zeros((256, 256, 3), np.uint8)
    rgb[:128, :, 0] = 220
    rgb[128:, :, 2] = 220
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    with pytest.raises(ImageRejected) as err:
        load(buf.getvalue())
    assert err.value.code == "colour-photograph"
