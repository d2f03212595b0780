"""The demo model's world: its caption grammar, its pictures, and reading a picture back."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from flux_batch.demo import model_dir
from flux_batch.demo.scoring import Reading, matches, psnr, read
from flux_batch.demo.shapes import COLOURS, SIZE, Caption, all_captions, draw, parse, vocabulary


def test_every_caption_parses_back_to_itself():
    captions = all_captions()
    assert len(captions) == 6 * 3 * 3 * 6 == len({c.text() for c in captions})
    for caption in captions:
        assert parse(caption.text()) == caption
    assert parse("A Large BLUE triangle, in the center") == Caption("blue", "triangle", "large", "centre")
    assert parse("a red fox in the snow") is None  # no shape: outside the grammar


def test_scoring_reads_drawn_pictures_correctly():
    rng = random.Random(7)
    right, total = Counter(), Counter()
    for _ in range(300):
        caption = Caption(
            rng.choice(list(COLOURS)),
            rng.choice(("circle", "square", "triangle")),
            rng.choice((None, "small", "large")),
            rng.choice((None, "left", "right", "top", "bottom", "centre")),
        )
        picture = np.asarray(draw(caption, rng))
        assert picture.shape == (SIZE, SIZE, 3)
        for attribute, ok in matches(caption, read(picture)).items():
            if ok is not None:
                right[attribute] += ok
                total[attribute] += 1
    assert {a: right[a] / total[a] for a in total} == {
        "colour": 1.0,
        "shape": 1.0,
        "size": 1.0,
        "position": 1.0,
    }


def test_a_blank_picture_shows_nothing_and_matches_no_caption():
    blank = np.full((SIZE, SIZE, 3), 235, np.uint8)
    assert read(blank) == Reading()
    assert matches(Caption("red", "circle", None, "left"), read(blank)) == {
        "colour": False,
        "shape": False,
        "size": None,
        "position": False,
    }


def test_psnr():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    assert psnr(a, b) == 100.0
    b[0, 0, 0] = 255  # MSE = 255^2 / 48
    assert psnr(a, b) == pytest.approx(10 * np.log10(48))


def test_the_shipped_tokenizers_hold_each_caption_word_as_one_token():
    from transformers import CLIPTokenizer, T5TokenizerFast

    clip = CLIPTokenizer.from_pretrained(model_dir() / "tokenizer")
    t5 = T5TokenizerFast.from_pretrained(model_dir() / "tokenizer_2")
    for word in vocabulary():
        assert clip.tokenize(word) == [word + "</w>"]
        assert t5.tokenize(word) == ["\u2581" + word]
    assert len(t5("a large blue triangle on the left").input_ids) == 8  # 7 words and the end


def test_capitalised_words_embed_as_lowercase_ones():
    import torch
    from transformers import T5EncoderModel, T5TokenizerFast

    t5 = T5EncoderModel.from_pretrained(model_dir() / "text_encoder_2")
    tokenizer = T5TokenizerFast.from_pretrained(model_dir() / "tokenizer_2")
    with torch.no_grad():
        lower, upper = (
            t5(**tokenizer(text, return_tensors="pt")).last_hidden_state
            for text in ("a red circle on the left", "A Red Circle On The Left")
        )
    assert torch.equal(lower, upper)
