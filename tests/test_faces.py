"""Tests for the procedural face renderer (viker.data.synth.faces).

They check what the benchmark relies on: determinism, well-separated identities,
and identities that stay recognisable at 32x32 pixels under a changed view.
"""

import io
import itertools
import random

import numpy as np
import pytest
from PIL import Image

from viker.data.synth.faces import (
    BACKGROUNDS,
    FaceSpec,
    View,
    contact_sheet,
    png_bytes,
    random_test_view,
    render_face,
    render_pattern,
    render_pet,
    render_scene,
    sample_face_specs,
    spec_distance,
)

SPEC = FaceSpec("round", "tan", "curly", "red", "green", True, False, "none", "teal")


def _small(img: Image.Image, res: int = 32) -> np.ndarray:
    return np.asarray(img.resize((res, res), Image.Resampling.BILINEAR), dtype=np.float32).ravel()


# --------------------------------------------------------------------------- specs
def test_sample_specs_deterministic():
    a = sample_face_specs(30, random.Random(7))
    b = sample_face_specs(30, random.Random(7))
    c = sample_face_specs(30, random.Random(8))
    assert a == b
    assert a != c


def test_sample_150_specs_are_well_separated():
    specs = sample_face_specs(150, random.Random(0), min_distance=3)
    assert len(specs) == len(set(specs)) == 150
    assert min(spec_distance(x, y) for x, y in itertools.combinations(specs, 2)) >= 3


def test_sample_specs_respects_exclude():
    forget = sample_face_specs(40, random.Random(1), min_distance=3)
    retain = sample_face_specs(110, random.Random(2), min_distance=3, exclude=forget)
    assert all(spec_distance(r, f) >= 3 for r in retain for f in forget)
    assert not set(retain) & set(forget)


def test_sample_specs_impossible_raises():
    with pytest.raises(ValueError):
        sample_face_specs(2, random.Random(0), min_distance=10)  # only 9 attributes
    with pytest.raises(ValueError):
        # At distance 9 every attribute must differ; 'glasses' has only 2 values.
        sample_face_specs(3, random.Random(0), min_distance=9)


def test_spec_validation_and_description():
    with pytest.raises(ValueError):
        FaceSpec("triangle", "tan", "curly", "red", "green", True, False, "none", "teal")
    text = SPEC.describe()
    for word in ("round face", "tan skin", "red curly hair", "glasses", "teal background"):
        assert word in text
    assert "beard" not in text


# --------------------------------------------------------------------------- rendering
def test_render_face_basic_and_deterministic():
    img = render_face(SPEC, size=64)
    assert img.mode == "RGB" and img.size == (64, 64)
    assert render_face(SPEC, size=100).size == (100, 100)
    view = View(pose=0.4, tilt=-8, light=1.2, crop=1.1, side_light=0.1)
    assert png_bytes(render_face(SPEC, view, 64)) == png_bytes(render_face(SPEC, view, 64))
    other = FaceSpec("round", "tan", "curly", "blonde", "green", True, False, "none", "teal")
    assert png_bytes(render_face(other, view, 64)) != png_bytes(render_face(SPEC, view, 64))


def test_png_bytes_drops_metadata():
    img = render_face(SPEC, size=32)
    tagged = img.copy()
    tagged.info.update({"dpi": (300, 300), "Comment": "hello"})
    data = png_bytes(tagged)
    assert data == png_bytes(img)
    assert Image.open(io.BytesIO(data)).info.get("Comment") is None


def test_random_test_view_in_range_and_different():
    rng = random.Random(3)
    for _ in range(50):
        v = random_test_view(rng)
        assert 0.3 <= abs(v.pose) <= 1 and 4 <= abs(v.tilt) <= 12
        assert 0.7 <= v.light <= 1.3 and abs(v.light - 1) >= 0.1
        assert 1.0 < v.crop <= 1.25
    # A test view must change the pixels noticeably (not a near-copy of the train image).
    a = _small(render_face(SPEC, size=64))
    b = _small(render_face(SPEC, random_test_view(random.Random(4)), size=64))
    assert np.abs(a - b).mean() > 8


def test_background_stays_recognisable_under_test_views():
    names, colors = list(BACKGROUNDS), np.array(list(BACKGROUNDS.values()), dtype=float)
    unit = colors / np.linalg.norm(colors, axis=1, keepdims=True)
    specs = sample_face_specs(16, random.Random(5))
    vr = random.Random(6)
    for spec in specs:
        img = np.asarray(render_face(spec, random_test_view(vr), size=48), dtype=float)
        corner = img[:4, :4].reshape(-1, 3).mean(0)  # top corners are always background
        # Lighting scales brightness, so compare colour direction (hue), not magnitude.
        guess = names[int(np.argmax(unit @ (corner / np.linalg.norm(corner))))]
        assert guess == spec.background


def test_identity_survives_view_change_at_32px():
    """Nearest-neighbour (L2 on 32x32 pixels) from test view back to the 40 default views.

    Over 30 seeds the mean accuracy was ~97% and the worst single seed 87.5%; we
    pool two galleries of 40 and require >= 90%, which holds with a wide margin.
    """
    correct = total = 0
    for seed in (0, 1):
        specs = sample_face_specs(40, random.Random(seed))
        vr = random.Random(100 + seed)
        gallery = np.stack([_small(render_face(s, size=64)) for s in specs])
        queries = np.stack([_small(render_face(s, random_test_view(vr), size=64)) for s in specs])
        d = ((queries[:, None, :] - gallery[None, :, :]) ** 2).sum(-1)
        correct += int((d.argmin(1) == np.arange(len(specs))).sum())
        total += len(specs)
    assert correct / total >= 0.9, f"accuracy {correct}/{total}"


@pytest.mark.parametrize("fn", [render_pet, render_pattern, render_scene])
def test_distractor_images(fn):
    imgs = [fn(random.Random(i), size=48) for i in range(8)]
    for im in imgs:
        assert im.mode == "RGB" and im.size == (48, 48)
        assert np.asarray(im).std() > 10  # not a blank canvas
    assert len({png_bytes(im) for im in imgs}) == 8  # draws differ
    assert png_bytes(fn(random.Random(0), size=48)) == png_bytes(imgs[0])  # and are reproducible


def test_contact_sheet_grid_size():
    tiles = [(render_pattern(random.Random(i), size=40), f"item {i}") for i in range(10)]
    one_row = contact_sheet(tiles[:4], columns=4, thumb=64)
    three_rows = contact_sheet(tiles, columns=4, thumb=64)
    cell_w = 64 + 8
    assert one_row.size[0] == three_rows.size[0] == 4 * cell_w
    assert one_row.size[1] > 64
    assert three_rows.size[1] == 3 * one_row.size[1]
    titled = contact_sheet(tiles, columns=4, thumb=64, title="Forget set")
    assert titled.size[0] == 4 * cell_w and titled.size[1] > three_rows.size[1]
    assert contact_sheet(tiles[:3], columns=8, thumb=64).size[0] == 3 * cell_w  # no empty columns
    # A thumbnail actually lands in its cell (top-left pixel of cell 0 is not white).
    assert three_rows.getpixel((4 + 32, 4 + 32)) != (255, 255, 255)
