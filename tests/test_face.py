"""Face module: dlib landmarks on a real photo, boxes, no-face error, masks per UNet level."""

import numpy as np
import pytest

from emotivetalk_jax.data import face as F

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def astronaut():
    return skimage_data.astronaut()


def test_astronaut_boxes_are_nested(astronaut):
    f = F.analyze_face(astronaut)
    h, w = astronaut.shape[:2]
    lx0, ly0, lx1, ly1 = f.lip_box
    fx0, fy0, fx1, fy1 = F.clip_box(f.face_box, (h, w))
    assert f.landmarks.shape == (68, 2)
    assert 0 <= fx0 < lx0 < lx1 < fx1 <= w
    assert 0 <= fy0 < ly0 < ly1 < fy1 <= h
    assert ly0 > 0.5 * (fy0 + fy1)  # the mouth is in the lower half of the face


def test_no_face_names_the_face_box_option():
    with pytest.raises(F.NoFaceError, match="face_box") as e:
        F.analyze_face(np.full((160, 160, 3), 127, np.uint8))
    assert "\n" not in str(e.value)


def test_user_face_box_for_undetectable_portraits():
    img = np.full((128, 128, 3), 200, np.uint8)
    f = F.analyze_face(img, face_box=(30, 20, 100, 110))
    lip = f.lip_box
    assert 30 <= lip[0] < lip[2] <= 100 and 20 <= lip[1] < lip[3] <= 110
    with pytest.raises(ValueError, match="face box"):
        F.analyze_face(img, face_box=(100, 20, 30, 110))


def test_masks_are_consistent_across_unet_levels(astronaut):
    f = F.analyze_face(astronaut)
    sizes = F.unet_mask_sizes(512, 4)
    assert sizes == [64, 32, 16, 8]
    masks = F.masks_at_resolutions(f.lip_box, F.clip_box(f.face_box, 512), 512, sizes)
    for s in sizes:
        for k in ("lip", "face"):
            m = masks[s][k]
            assert m.shape == (s, s, 1) and m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0}
        assert (masks[s]["lip"] <= masks[s]["face"]).all()  # lip region inside face region
        assert 0 < masks[s]["lip"].sum() < masks[s]["face"].sum()
    for a, b in zip(sizes[:-1], sizes[1:]):  # max-pool by 2 gives the next level exactly
        for k in ("lip", "face"):
            pooled = masks[a][k][..., 0].reshape(b, 2, b, 2).max((1, 3))
            np.testing.assert_array_equal(pooled, masks[b][k][..., 0])


def test_box_helpers_validate():
    with pytest.raises(ValueError, match="68"):
        F.lip_box(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="divide"):
        F.unet_mask_sizes(100, 4)
    x, y, s, s2 = F.crop_box((10, 10, 50, 60), (640, 360))
    assert s == s2 and s % 2 == 0 and 0 <= x and x + s <= 640 and 0 <= y and y + s <= 360
