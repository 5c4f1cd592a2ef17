"""The procedural shapes data set: deterministic for a seed, varied wording, held-out combinations kept out."""

import re

import numpy as np

from generation.shapes import dataset as ds


def test_same_seed_gives_identical_images_and_captions():
    """Two batches from one seed are equal pixel for pixel and word for word."""
    a_img, a_s, a_c = ds.make_batch(12, seed=123, size=64)
    b_img, b_s, b_c = ds.make_batch(12, seed=123, size=64)
    assert np.array_equal(a_img, b_img)
    assert a_s == b_s
    assert a_c == b_c


def test_other_seed_gives_other_data():
    """A different seed draws different attributes, captions and pixels."""
    a_img, a_s, a_c = ds.make_batch(12, seed=1, size=64)
    b_img, b_s, b_c = ds.make_batch(12, seed=2, size=64)
    assert not np.array_equal(a_img, b_img)
    assert a_c != b_c
    assert a_s != b_s


def test_images_have_the_requested_size_and_type():
    """Images come back as N x H x W x 3 uint8 at the asked size."""
    img, _, _ = ds.make_batch(3, seed=0, size=64)
    assert img.shape == (3, 64, 64, 3) and img.dtype == np.uint8
    img, _, _ = ds.make_batch(2, seed=0)
    assert img.shape == (2, 128, 128, 3)


def test_shape_is_drawn_in_its_color_at_its_position():
    """The pixel at a shape's centre has the shape's color, and the far corner has the scene's."""
    rng = np.random.default_rng(0)
    s = ds.Sample("square", "red", "large", "left", "white")
    img = ds.render(s, rng)
    cx, cy = ds.CENTER["left"]
    assert tuple(img[cy, cx]) == ds.RGB["red"]
    assert tuple(img[5, 123]) == (246, 246, 246)


def test_captions_use_synonyms():
    """Over many captions of one red square, several color and kind words appear."""
    rng = np.random.default_rng(5)
    s = ds.Sample("square", "red", "small", "top", "sand")
    words = set()
    for _ in range(300):
        words.update(re.findall(r"[\w-]+", ds.full_caption(s, rng)))
    assert {"red", "crimson", "scarlet"} <= words
    assert {"square", "box", "block"} <= words
    assert {"sandy", "desert"} <= words


def test_full_caption_names_every_attribute():
    """An evaluation caption mentions a word for each of the five attributes."""
    for s, text in ds.eval_prompts():
        for table, value in ((ds.KIND_WORDS, s.kind), (ds.COLOR_WORDS, s.color), (ds.SIZE_WORDS, s.size),
                             (ds.POSITION_WORDS, s.position), (ds.BACKGROUND_WORDS, s.background)):
            assert any(w in text for w in table[value]), (text, value)


def test_held_out_combinations_never_drawn_for_training():
    """Training draws never hit an evaluation combination; evaluation draws may."""
    rng = np.random.default_rng(3)
    held = set(ds.HELD_OUT)
    assert len(held) == 50
    drawn = {ds.random_sample(rng) for _ in range(20000)}
    assert not drawn & held


def test_vocabulary_covers_every_caption_word():
    """Every token a caption can produce is in the tokenizer's vocabulary."""
    vocab = set(ds.vocabulary())
    _, _, caps = ds.make_batch(300, seed=11, size=64)
    for c in caps:
        for w in re.findall(r"\w+|[^\w\s]", c.lower()):
            assert w in vocab, (w, c)
