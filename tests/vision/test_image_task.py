"""The image-classification task on the one loop: training, best/ in Hugging Face layout,
exact resume, load/predict, the CLI, ONNX export, serving uploads, rollout and the report."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from vision_data import make_archive, vit_config

import torchformer
from torchformer.api import ImageClassifier
from torchformer.tasks.image_classify import train
from torchformer.train.checkpoint import load_checkpoint


def metrics(run, split="test") -> dict:
    return json.loads((run / "eval" / split / "metrics.json").read_text())


def test_a_tiny_vit_learns_the_shapes_and_best_is_a_hugging_face_vit(shapes_run, shapes_folder):
    # chance is 1/3; 30 of 32 at best; 28 with MKL's F.linear, 27 with oneDNN's kernel
    assert metrics(shapes_run)["accuracy"] >= 0.8
    best = shapes_run / "best"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json",
                 "image_classification.json"):  # fmt: skip
        assert (best / name).is_file(), name
    manifest = json.loads((shapes_run / "manifest.json").read_text())
    assert manifest["extra"]["sizes"] == {"train": 96, "val": 24, "test": 32}
    assert manifest["extra"]["labels"] == ["hbar", "square", "vbar"]
    transformers = pytest.importorskip("transformers")
    theirs = transformers.ViTForImageClassification.from_pretrained(best).eval()
    processor = transformers.ViTImageProcessor.from_pretrained(best)
    ours = torchformer.load(shapes_run)
    paths = sorted((shapes_folder / "test").rglob("*.png"))[:5]
    images = [Image.open(p).convert("RGB") for p in paths]
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    mine = ours.normalization.apply(ours.to_pixels(images))
    assert torch.allclose(pixel_values, mine, atol=1e-5)  # the same preprocessing
    with torch.no_grad():
        assert torch.allclose(theirs(pixel_values).logits, ours.model(mine).logits, atol=1e-5)
    assert theirs.config.id2label == {0: "hbar", 1: "square", 2: "vbar"}


def test_load_predicts_paths_arrays_pil_images_and_tensors_alike(shapes_run, shapes_folder):
    clf = torchformer.load(shapes_run)
    assert isinstance(clf, ImageClassifier) and clf.labels == ["hbar", "square", "vbar"]
    path = shapes_folder / "test" / "vbar" / "003.png"
    array = np.asarray(Image.open(path))
    predictions = clf.predict([path, str(path), array, Image.open(path),
                               torch.from_numpy(array).permute(2, 0, 1), path.read_bytes()])  # fmt: skip
    assert len({json.dumps(p, sort_keys=True) for p in predictions}) == 1
    assert predictions[0]["label"] == "vbar"
    assert abs(sum(predictions[0]["probabilities"].values()) - 1) < 1e-5
    with pytest.raises(ValueError, match=r"images\[1\]: .*not a readable image"):
        clf.predict([path, b"plain text, not an image"])
    with pytest.raises(TypeError, match=r"images\[0\]: expected a path"):
        clf.predict([3.5])


def test_every_array_and_tensor_layout_decodes_to_the_pixels_of_its_pil_image(shapes_run):
    clf = torchformer.load(shapes_run)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)  # not the model's 16x16: resized
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    as_rgb, as_gray = clf.to_pixels(Image.fromarray(rgb)), clf.to_pixels(Image.fromarray(gray))
    assert as_rgb.shape == (1, 3, 16, 16) and not torch.equal(as_rgb, as_gray)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    for image in (rgb, chw, rgba):
        assert torch.equal(clf.to_pixels(image), as_rgb)
    for image in (gray, gray[..., None], torch.from_numpy(gray)[None]):
        assert torch.equal(clf.to_pixels(image), as_gray)
    for channels in (2, 5):
        with pytest.raises(ValueError, match=r"images\[0\]: expected \(H, W\), \(H, W, 3\)"):
            clf.to_pixels(rng.integers(0, 256, (24, 20, channels), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"images\[1\]: expected a uint8 .* float32"):
        clf.to_pixels([rgb, rgb.astype(np.float32)])
    with pytest.raises(ValueError, match=r"^images is empty$"):
        clf.to_pixels([])


def test_save_writes_a_model_directory_that_loads_and_predicts_the_same(shapes_run, tmp_path):
    clf = torchformer.load(shapes_run)
    out = clf.save(tmp_path / "saved")
    again = torchformer.load(out)
    assert isinstance(again, ImageClassifier) and again.labels == clf.labels
    assert again.channels == clf.channels and again.normalization == clf.normalization
    images = [np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)
              for i in range(4)]  # fmt: skip
    assert torch.equal(again.to_pixels(images), clf.to_pixels(images))
    with torch.no_grad():
        pixels = clf.to_pixels(images)
        assert torch.equal(again.logits(pixels), clf.logits(pixels))


def test_best_is_scored_on_validation_and_test_and_both_are_logged(shapes_run):
    rows = [json.loads(x) for x in (shapes_run / "metrics.jsonl").read_text().splitlines()]
    last_epoch = max(r["epoch"] for r in rows if r["split"] == "train")
    for name in ("val", "test"):
        logged = [r for r in rows if r["split"] == f"best_{name}"]
        assert len(logged) == 1 and logged[0]["epoch"] == last_epoch + 1  # epochs completed
        assert logged[0]["accuracy"] == pytest.approx(metrics(shapes_run, name)["accuracy"])


def test_normalization_round_trips_through_the_hugging_face_file(tmp_path):
    from torchformer.tasks.image_classifier import Normalization

    norm = Normalization(size=8, mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.25])
    data = json.loads(norm.write(tmp_path).read_text())
    assert data["rescale_factor"] == 1 / 255 and data["size"] == {"height": 8, "width": 8}
    assert data["image_processor_type"] == "ViTImageProcessor"
    assert Normalization.read(tmp_path, default_size=99) == norm
    data["size"] = 24  # older processor files give one integer
    (tmp_path / "int").mkdir()
    (tmp_path / "int" / "preprocessor_config.json").write_text(json.dumps(data))
    assert Normalization.read(tmp_path / "int", default_size=99).size == 24
    plain = Normalization.read(tmp_path / "absent", default_size=12, channels=1)
    assert plain == Normalization(size=12, mean=[0.5], std=[0.5])  # ViT's default
    white = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    expected = torch.tensor([(1 - 0.1) / 0.4, (1 - 0.2) / 0.5, (1 - 0.3) / 0.25])
    torch.testing.assert_close(norm.apply(white)[0, :, 0, 0], expected)


def test_the_final_evaluation_keeps_the_worst_images_for_the_report(shapes_run):
    test = shapes_run / "eval" / "test"
    errors = [json.loads(x) for x in (test / "errors.jsonl").read_text().splitlines()]
    ids = {r["id"] for r in errors}
    assert {"test/hbar/wrong-0.png", "test/hbar/wrong-1.png"} <= ids  # the planted errors
    for record in errors:
        assert record["id"].startswith("test/") and (test / record["thumbnail"]).is_file()
    report = (shapes_run / "report.html").read_text()
    assert report.count("class='tf-thumb'") == len(errors)  # every stored error, with its image
    assert report.count("alt='attention rollout'") == min(4, len(errors))


def test_the_report_reads_no_image_outside_the_evaluation_folder(shapes_run, tmp_path):
    import shutil

    from torchformer.viz.report import render_report

    run = tmp_path / "run"
    shutil.copytree(shapes_run, run)
    secret = tmp_path / "secret.png"
    Image.new("RGB", (16, 16), (255, 0, 0)).save(secret)
    errors = run / "eval" / "test" / "errors.jsonl"
    records = [json.loads(x) for x in errors.read_text().splitlines()]
    records[0]["thumbnail"] = str(secret)  # absolute
    records[1]["thumbnail"] = "../../../secret.png"  # relative, climbing out
    errors.write_text("".join(json.dumps(r) + "\n" for r in records))
    page = render_report(run)
    assert page.count("class='tf-thumb'") == len(records) - 2


def test_resume_continues_with_the_same_augmentation_as_an_unbroken_run(tmp_path, shapes_folder):
    settings = {"train.epochs": 2, "train.checkpoint_every": 3, "model.dropout": 0.1}
    unbroken = train(vit_config(tmp_path / "a", shapes_folder, **settings))
    config = vit_config(tmp_path / "b", shapes_folder, **settings)
    train(config, stop_at_step=5)
    resumed = train(config, resume=True)
    a = load_checkpoint(unbroken / "checkpoints" / "step-000012.pt")["model"]
    b = load_checkpoint(resumed / "checkpoints" / "step-000012.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_archive_source_and_its_separate_val_split_train_too(tmp_path):
    from vision_data import make_image_folder

    root = make_image_folder(tmp_path / "data", per_class={"train": 6, "val": 2, "test": 2})
    archive = make_archive(root, tmp_path / "data.tar.gz")
    run = train(vit_config(tmp_path, archive, **{"train.epochs": 1, "report": False}))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["extra"]["sizes"] == {"train": 18, "val": 6, "test": 6}  # val folder used


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torchformer", *args], capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_cli_predict_and_evaluate_an_image_folder(shapes_run, shapes_folder):
    path = shapes_folder / "test" / "square" / "001.png"
    out = run_cli("predict", str(shapes_run), str(path), "--json")
    assert out.returncode == 0, out.stderr
    line = json.loads(out.stdout.splitlines()[0])
    assert line["image"] == str(path) and line["label"] in ("hbar", "square", "vbar")
    assert line["label"] == torchformer.load(shapes_run).predict(path)[0]["label"]
    out = run_cli("evaluate", str(shapes_run), "--data", str(shapes_folder), "--split", "test",
                  "--name", "again")  # fmt: skip
    assert out.returncode == 0, out.stderr
    again = metrics(shapes_run, "again")
    assert again["accuracy"] == metrics(shapes_run)["accuracy"]  # the same 32 test images
    assert again["num_examples"] == 32


def test_onnx_export_passes_its_parity_grid_and_predicts_like_pytorch(
    shapes_run, shapes_folder, tmp_path
):
    pytest.importorskip("onnxruntime")
    from torchformer.export.image_onnx import export_image_classifier
    from torchformer.export.runtime import OnnxImageClassifier

    clf = torchformer.load(shapes_run)
    result = export_image_classifier(clf, tmp_path / "onnx")
    assert result.parity.passed and len(result.parity.cells) == 9
    assert result.parity.worst.max_abs_diff < 1e-4
    onnx = OnnxImageClassifier.from_dir(tmp_path / "onnx")
    paths = sorted((shapes_folder / "test").rglob("*.png"))
    a, b = clf.predict_proba(paths), onnx.predict_proba(paths)
    assert torch.allclose(a, b, atol=1e-5) and onnx.labels == clf.labels
    metadata = json.loads((tmp_path / "onnx" / "export.json").read_text())
    metadata["parity"]["passed"] = False
    (tmp_path / "onnx" / "export.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="failed its parity check"):
        OnnxImageClassifier.from_dir(tmp_path / "onnx")


@pytest.fixture(scope="module")
def image_client(shapes_run):
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    from fastapi.testclient import TestClient

    from torchformer.serve.app import ServeLimits, create_app, load_predictor

    limits = ServeLimits(max_images=3, max_image_bytes=20_000, max_image_pixels=10_000)
    with TestClient(create_app(load_predictor(shapes_run), limits=limits)) as client:
        yield client


def test_serve_answers_uploads_with_the_labels_predict_gives(
    image_client, shapes_run, shapes_folder
):
    paths = [shapes_folder / "test" / c / "002.png" for c in ("hbar", "square", "vbar")]
    files = [("images", (p.name, p.read_bytes(), "image/png")) for p in paths]
    answer = image_client.post("/predict", files=files)
    assert answer.status_code == 200, answer.text
    expected = torchformer.load(shapes_run).predict(paths)
    got = answer.json()["predictions"]
    assert [p["label"] for p in got] == [p["label"] for p in expected]
    assert all(abs(g["confidence"] - e["confidence"]) < 1e-5 for g, e in zip(got, expected))


def error(answer) -> tuple[int, str, str]:
    body = answer.json()["error"]
    return answer.status_code, body["code"], body["message"]


def test_serve_rejects_non_images_oversized_and_too_many_uploads_with_json_errors(
    image_client, shapes_folder
):
    good = (shapes_folder / "test" / "hbar" / "000.png").read_bytes()
    status, code, message = error(image_client.post(
        "/predict", files=[("images", ("a.png", good, "image/png")),
                           ("images", ("notes.txt", b"hello", "text/plain"))]))  # fmt: skip
    assert (status, code) == (422, "invalid_image") and "images[1] (notes.txt)" in message
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 100, 3), dtype=np.uint8)).save(
        buffer, format="PNG"
    )
    status, code, message = error(
        image_client.post(
            "/predict", files=[("images", ("big.png", buffer.getvalue(), "image/png"))]
        )
    )
    assert (status, code) == (413, "image_too_large") and "big.png" in message
    status, code, _ = error(
        image_client.post(
            "/predict", files=[("images", (f"{i}.png", good, "image/png")) for i in range(4)]
        )
    )
    assert (status, code) == (413, "too_many_images")
    status, code, message = error(image_client.post("/predict", json={"texts": ["a picture"]}))
    assert (status, code) == (415, "unsupported_media_type") and "multipart/form-data" in message
    status, code, message = error(
        image_client.post("/predict", files=[("caption", (None, b"no file here"))])
    )  # a multipart body, no file part
    assert (status, code) == (422, "invalid_request") and "no file part" in message
    health = image_client.get("/health").json()
    assert health["labels"] == ["hbar", "square", "vbar"] and health["status"] == "ok"


def test_explain_draws_attention_rollout_over_an_image(shapes_run, shapes_folder, tmp_path):
    out = run_cli("explain", str(shapes_run), str(shapes_folder / "test" / "hbar" / "004.png"),
                  "--out", str(tmp_path / "explain.html"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "explain.html").read_text()
    assert "Attention rollout" in page and page.count("data:image/png;base64,") == 2


def test_an_image_servers_api_description_documents_the_upload(image_client):
    schema = image_client.app.openapi()["paths"]["/predict"]["post"]
    assert "multipart/form-data" in schema["requestBody"]["content"]
    assert (
        "415" in schema["responses"] and "application/json" not in schema["requestBody"]["content"]
    )


def test_training_statistics_are_the_same_whatever_the_chunk_size():
    from torchformer.tasks.image_classifier import Normalization

    pixels = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    whole = Normalization.from_pixels(pixels, size=4)
    x = pixels.double() / 255
    torch.testing.assert_close(torch.tensor(whole.mean, dtype=torch.float64), x.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(
        torch.tensor(whole.std, dtype=torch.float64), x.std(dim=(0, 2, 3), unbiased=False)
    )
    chunked = Normalization.from_pixels(pixels, size=4, chunk=2)  # 3 chunks
    torch.testing.assert_close(torch.tensor(chunked.mean), torch.tensor(whole.mean))
    torch.testing.assert_close(torch.tensor(chunked.std), torch.tensor(whole.std))


def test_a_checkpoints_image_size_is_read_from_its_config(tmp_path):
    from torchformer.tasks.image_classify import _checkpoint_image_size

    for value, expected in ((32, 32), ([48, 48], 48), (None, 224)):  # 224: ViT's default
        folder = tmp_path / str(expected)
        folder.mkdir()
        config = {"model_type": "vit"} | ({} if value is None else {"image_size": value})
        (folder / "config.json").write_text(json.dumps(config))
        assert _checkpoint_image_size(str(folder)) == expected


def test_train_and_test_samples_are_balanced_and_validation_is_held_out_first(
    tmp_path, shapes_folder
):
    from torchformer.tasks.image_classify import load_image_splits

    config = vit_config(tmp_path, shapes_folder, **{"data.train_samples": 30,
                                                    "data.test_samples": 9})  # fmt: skip
    splits, classes = load_image_splits(config, 16)
    assert classes == ["hbar", "square", "vbar"]
    assert splits["train"].labels.bincount().tolist() == [10, 10, 10]
    assert splits["test"].labels.bincount().tolist() == [3, 3, 3]
    assert len(splits["val"]) == 24  # 20% of the 120 training images, before the sample
