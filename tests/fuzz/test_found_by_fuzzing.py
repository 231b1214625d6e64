"""The failing inputs the fuzz tests of this folder found, kept as plain regression tests.

- ``/generate`` answered 500 ("probability tensor contains either inf, nan or element < 0")
  for a temperature or repetition penalty that overflows float32 logits (5e-324, 3.2e307)
  and for a top_p that rounds to 0 in float32 (5e-324): ``generate.sampling``.
- ``read_table`` raised ``RecursionError`` on deeply nested JSON and a bare ``ValueError``
  (no file, no line) on integers of more than 4300 digits: ``data.tabular``.
- ``Tokenizer.encode_batch`` raised ``TypeError: TextEncodeInput must be Union[...]``, naming
  no text, for a lone surrogate; ``predict()`` passed it on, from a batch sorted by length:
  ``text.tokenizer``, ``tasks.classifier``.
"""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient
from fuzzing import tiny_language_model

from torchformer.data.records import DataError
from torchformer.data.tabular import read_table
from torchformer.generate.sampling import sample_next
from torchformer.serve.app import ServeLimits, create_app
from torchformer.text.tokenizer import Tokenizer


def test_sampling_survives_extreme_temperatures_and_top_p():
    logits = torch.tensor([[0.5, 3.0, -1.0]])
    assert sample_next(logits, temperature=5e-324).tolist() == [1]  # the limit: greedy
    assert sample_next(logits, top_p=5e-324).tolist() == [1]  # only the most likely stays
    with_banned = torch.tensor([[1.0, float("-inf"), 2.0]])
    for seed in range(10):  # -inf / huge temperature was NaN
        generator = torch.Generator().manual_seed(seed)
        assert sample_next(with_banned, temperature=3.2e307, generator=generator).item() != 1
    overflowed = torch.tensor([[float("inf"), 1.0]])  # a tiny repetition penalty did this
    assert sample_next(overflowed).tolist() == [0]


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "", "temperature": 5e-324, "repetition_penalty": 5e-324, "top_p": 5e-324,
         "top_k": 1, "num_beams": 1, "seed": 0, "stop": [], "stream": True},
        {"prompt": "wrong", "repetition_penalty": 405, "temperature": 3.2345678593849436e307,
         "min_new_tokens": 4, "top_k": 1000, "stream": True},
        {"prompt": "a film", "top_p": 5e-324, "stream": False},
    ],
    ids=["tiny-temperature", "huge-temperature", "tiny-top-p"],
)  # fmt: skip
def test_generate_answers_the_requests_that_were_server_errors(body):
    app = create_app(tiny_language_model(), limits=ServeLimits(max_new_tokens=8))
    with TestClient(app) as client:
        response = client.post("/generate", json=body)
    assert response.status_code == 200, response.text
    if body["stream"]:
        assert '"done": true' in response.text and "event: error" not in response.text
    else:
        assert response.json()["text"].startswith(body["prompt"])


@pytest.mark.parametrize(
    "name, data, line",
    [
        ("deep.jsonl", b'{"text": "ok", "label": 1}\n{"text": ' + b"[" * 100_000, 2),
        ("digits.jsonl", b'{"text": "ok", "label": ' + b"1" * 5_000 + b"}\n", 1),
        ("deep.json", b"[" * 100_000, None),
        ("digits.json", b'[{"text": "ok", "label": ' + b"1" * 5_000 + b"}]", None),
    ],
)
def test_json_beyond_pythons_limits_is_a_data_error_naming_file_and_line(
    tmp_path, name, data, line
):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DataError, match="malformed JSON") as caught:
        read_table(path)
    assert caught.value.file == path and caught.value.line == line


def test_a_csv_label_too_long_for_int_stays_text(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("text,label\nok," + "1" * 5_000 + "\nfine,2\n")
    assert [r.label for r in read_table(path).records] == ["1" * 5_000, "2"]


def test_a_lone_surrogate_is_named_by_its_own_index(tiny_classifier):
    tokenizer = Tokenizer.train_wordpiece(["a fine film"] * 4, vocab_size=60, min_frequency=1)
    with pytest.raises(ValueError, match=r"texts\[1\]: lone surrogate '\\ud800' at character 3"):
        tokenizer.encode_batch(["fine", "so \ud800 dull"], max_length=16)
    # predict() sorts texts by length: the short bad text would come first in its batch.
    texts = ["a wonderful film with a superb cast", "x \udcff"]
    with pytest.raises(ValueError, match=r"^texts\[1\] is not valid Unicode"):
        tiny_classifier.predict(texts)
