"""Classifying uploads: decoding untrusted bytes in memory, per-file refusals, results, concurrency."""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from tmdafm_core import classify, pipeline
from tmdafm_core.data.images import sniff_type
from tmdafm_core.features import FEATURE_COLUMNS


@pytest.fixture
def store(classify_store):
    return classify_store


def tiff_bytes(image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, **kwargs)
    return buffer.getvalue()


def pil_bytes(image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


RNG = np.random.default_rng(3)
GRAY = RNG.random((64, 64))


@pytest.mark.parametrize("data, kind", [
    (tiff_bytes((GRAY * 255).astype(np.uint8)), "tiff"),
    (tiff_bytes((GRAY * 65535).astype(np.uint16)), "tiff"),
    (tiff_bytes(GRAY.astype(np.float32) * 40e-9), "tiff"),
    (pil_bytes((GRAY * 255).astype(np.uint8), "PNG"), "png"),
    (pil_bytes(np.stack([(GRAY * 255).astype(np.uint8)] * 3, axis=-1), "PNG"), "png"),
    (pil_bytes((GRAY * 255).astype(np.uint8), "JPEG"), "jpeg"),
])
def test_supported_types_decode_in_memory(data, kind):
    assert sniff_type(data) == kind
    image, _ = classify.decode_image(data)
    assert image.shape == (64, 64) and image.dtype == np.float32
    assert image.min() == 0.0 and image.max() == 1.0
    if kind != "jpeg":
        assert np.corrcoef(image.ravel(), GRAY.ravel())[0, 1] > 0.99


def test_tiff_resolution_tags_give_the_pixel_size():
    data = tiff_bytes((GRAY * 65535).astype(np.uint16), resolution=(1e7 / 4.0, 1e7 / 4.0),
                      resolutionunit="CENTIMETER")
    assert classify.decode_image(data)[1] == pytest.approx(4.0)


def test_empty_file_is_refused():
    with pytest.raises(ValueError, match="empty"):
        classify.decode_image(b"")


def test_type_is_judged_by_content_not_name():
    with pytest.raises(ValueError, match="judged by its content"):
        classify.decode_image(b"print('hello')  # a .tif by name only")


def test_one_pixel_image_is_refused():
    with pytest.raises(ValueError, match="at least 32 px"):
        classify.decode_image(pil_bytes(np.zeros((1, 1), np.uint8), "PNG"))


def test_huge_image_is_refused_from_its_header():
    with pytest.raises(ValueError, match="at most 4096 px"):
        classify.decode_image(pil_bytes(np.zeros((40, 20000), np.uint8), "PNG"))
    with pytest.raises(ValueError, match="at most 4096 px"):  # 8192 px took 76 s and 10 GB before
        classify.decode_image(pil_bytes(np.zeros((8192, 40), np.uint8), "PNG"))


def test_corrupt_tiff_is_refused():
    with pytest.raises(ValueError, match="corrupt or unreadable TIFF"):
        classify.decode_image(b"II*\x00" + b"\x07" * 60)


def test_oversized_file_is_refused_before_decoding():
    with pytest.raises(ValueError, match="larger than"):
        classify.decode_image(tiff_bytes(GRAY.astype(np.float32)), max_bytes=1000)


def test_upload_data_url_is_decoded_and_checked():
    data = b"\x89PNG\r\n\x1a\nrest"
    assert classify.decode_upload("data:image/png;base64," + base64.b64encode(data).decode()) == data
    with pytest.raises(ValueError, match="base64"):
        classify.decode_upload("data:image/png;base64,@@@not base64@@@")


def test_upload_without_data_url_header_is_refused():
    with pytest.raises(ValueError, match="data URL"):
        classify.decode_upload("just text")


def test_uploaded_name_is_only_a_label():
    assert classify.display_name("../../etc/passwd") == "passwd"
    assert classify.display_name("C:\\x\\a\x00b.tif") == "ab.tif"
    assert classify.display_name("") == "upload"


def test_missing_models_name_the_command(tmp_path):
    missing = classify.missing_for_classify(tmp_path)
    assert len(missing) == 2 and all(command.startswith("tmdafm precompute") for _, command in missing)
    with pytest.raises(FileNotFoundError, match="tmdafm precompute"):
        classify.Classifier(tmp_path)


def _good(seed: int) -> bytes:
    return tiff_bytes((np.random.default_rng(seed).random((48, 48)) * 65535).astype(np.uint16))


def test_bad_files_get_messages_while_the_others_classify(store):
    files_before = sorted(p for p in store.rglob("*") if p.is_file())
    uploads = [("good.tif", _good(0)), ("empty.tif", b""), ("text.png", b"hello"),
               ("dot.png", pil_bytes(np.zeros((1, 1), np.uint8), "PNG")),
               ("wide.png", pil_bytes(np.zeros((32, 20000), np.uint8), "PNG")),
               ("good.png", "data:image/png;base64," + base64.b64encode(
                   pil_bytes((GRAY * 255).astype(np.uint8), "PNG")).decode())]
    results = classify.classify_uploads(store, uploads)
    assert [r["ok"] for r in results] == [True, False, False, False, False, True]
    assert [r["name"] for r in results] == [name for name, _ in uploads]
    good = results[0]
    classes = ("MoS2", "WS2", "WSe2", "MoSe2", "Mo-WSe2")
    assert tuple(good["class_probabilities"]) == classes and good["material"] in classes
    assert sum(good["class_probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert good["element_probabilities"] is None  # this store has no MtL run
    assert set(good["descriptors"]) == set(FEATURE_COLUMNS)
    assert all(0 <= d["percentile"] <= 100 for d in good["descriptors"].values())
    assert set(good["coordinates"]) == {f"PC{i + 1}" for i in range(10)}
    assert len(good["neighbours"]) == classify.N_NEIGHBOURS and good["neighbour_space"] == "full latent space"
    assert good["cam_uri"].startswith("data:image/png;base64,")
    # The fold ensemble: the mean of every fold model's probabilities, and how many folds agree.
    from tmdafm_core.training import load_ensemble, predict, predict_ensemble

    runs = load_ensemble(store / "runs" / "mtc")
    assert good["folds"] == len(runs) >= 2
    image, _ = classify.decode_image(_good(0))
    expected = predict_ensemble(runs, [image])
    assert good["class_probabilities"]["MoS2"] == pytest.approx(expected.class_probabilities[0, 0], abs=1e-5)
    assert good["agreement"] == pytest.approx(expected.agreement[0])
    mean = np.mean([predict(run, [image]).class_probabilities[0] for run in runs], axis=0)
    assert list(good["class_probabilities"].values()) == pytest.approx(list(mean), abs=1e-5)
    assert sorted(p for p in store.rglob("*") if p.is_file()) == files_before  # nothing written
    assert good["calibrated"] and good["novelty"] == pytest.approx(expected.novelty[0], rel=1e-4)
    assert good["unfamiliar"] == bool(expected.novelty[0] > 1) and good["novelty_quantile"] == 0.95
    table = classify.results_table(results)
    assert list(table.columns[:3]) == ["file", "status", "material"]
    assert {"agreement", "novelty", "unfamiliar"} <= set(table.columns)
    assert table["status"].tolist()[:2] == ["classified", "file is empty"]
    assert table.loc[0, "nearest_images"].count(";") == classify.N_NEIGHBOURS - 1


def test_placement_matches_the_saved_projection_and_neighbours_the_embeddings(store):
    classifier = classify.classifier_for(store)
    manifest = pipeline.load_manifest(store)
    image, _ = classify.decode_image(open(manifest["path"].iat[0], "rb").read())
    result = classifier.classify_image(image)
    projection = pd.read_csv(store / "latent" / "mtc" / "projection.csv")
    assert result["coordinates"]["PC1"] == pytest.approx(projection["PC1"].iat[0], abs=1e-4)
    assert result["neighbours"][0]["image"] == manifest["image"].iat[0]
    assert result["neighbours"][0]["distance"] == pytest.approx(0.0, abs=1e-4)


def test_too_many_files_are_reported(store, monkeypatch):
    monkeypatch.setattr(classify, "MAX_FILES", 1)
    results = classify.classify_uploads(store, [("a.tif", _good(1)), ("b.tif", _good(2))])
    assert results[0]["ok"] and not results[1]["ok"] and "at most 1 files" in results[1]["message"]


def test_ten_concurrent_requests_complete_correctly(store):
    expected = {i: classify.classify_uploads(store, [(f"{i}.tif", _good(i))])[0] for i in range(10)}
    got, errors = {}, []

    def request(i):
        try:
            got[i] = classify.classify_uploads(store, [(f"{i}.tif", _good(i))])[0]
        except Exception as exc:  # noqa: BLE001 - the test reports any failure of a thread
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(got) == 10
    for i in range(10):
        assert got[i]["material"] == expected[i]["material"]
        assert got[i]["class_probabilities"] == pytest.approx(expected[i]["class_probabilities"], abs=1e-5)
        assert got[i]["coordinates"]["PC1"] == pytest.approx(expected[i]["coordinates"]["PC1"], abs=1e-5)


def test_flat_activation_map_is_explained_not_drawn():
    image = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    uri, note = classify.cam_view(image, np.full((64, 64), 0.7), 32)
    assert uri is None and "32 px" in note and "1×1" in note
    uri, note = classify.cam_view(image, image[::-1], 64)
    assert uri.startswith("data:image/png;base64,") and note is None


def test_store_image_view_with_cam(store):
    image = pipeline.load_manifest(store)["image"].iat[0]
    view = classify.store_image_view(store, image)
    assert view["uri"].startswith("data:image/png;base64,") and view["cam_uri"].startswith("data:image/png")
    assert view["width"] == 32 and view["predicted"] in ("MoS2", "WS2", "WSe2", "MoSe2", "Mo-WSe2")
    with pytest.raises(ValueError, match="not an image of the store"):
        classify.store_image_view(store, "nope.tif")


def test_classify_page_functions(store):
    import app as app_module

    app_module.app.server.test_client().get("/")
    from pages import classify as page

    uploads = ["data:image/tiff;base64," + base64.b64encode(_good(5)).decode(), "data:text/plain;base64,aGk="]
    results, error = page.run_uploads(store, uploads, ["a.tif", "b.txt"])
    assert error is None and [r["ok"] for r in results] == [True, False]
    card = page.result_card(store, results[1], 1, {})
    assert "not a TIFF, PNG or JPEG" in card.children[1].children
    figure = page.scatter_of(store, results)
    stars = figure.data[-1]
    assert stars.name == "uploaded" and list(stars.text) == ["1"] and list(stars.hovertext) == ["a.tif"]
    _, error = page.run_uploads(store.parent / "empty-store", uploads[:1], ["a.tif"])
    assert "tmdafm precompute" in error


def test_an_image_unlike_the_training_images_gets_the_badge_and_greyed_probabilities(store):
    import app as app_module

    app_module.app.server.test_client().get("/")
    from pages import classify as page

    manifest = pipeline.load_manifest(store)
    yy, xx = np.mgrid[:64, :64]
    flat = tiff_bytes((0.3 * xx + 0.1 * yy).astype(np.float32))
    genuine = open(manifest["path"].iat[0], "rb").read()
    strange, familiar = classify.classify_uploads(store, [("flat.tif", flat), ("genuine.tif", genuine)])
    assert strange["unfamiliar"] and strange["novelty"] > 1
    assert not familiar["unfamiliar"] and familiar["novelty"] < 1
    assert "further from the training images than 95 % of genuine held-out images" in classify.trust_sentence(strange)
    assert "like the training images" in classify.trust_sentence(familiar)
    card = page.result_card(store, strange, 0, {"MoS2": "#000000"})
    assert "unfamiliar" in card.className.split()
    badge = card.children[0].children[-1]
    assert badge.children == classify.UNFAMILIAR_BADGE and badge.className == "unfamiliar-badge"
    assert "unfamiliar" not in page.result_card(store, familiar, 1, {}).className.split()
    unknown = {**familiar, "novelty": None, "unfamiliar": None, "calibrated": False,
               "trust_note": "runs/mtc: fold 0 was trained before tmdafm kept calibration"}
    sentence = classify.trust_sentence(unknown)
    assert "(not calibrated)" in sentence and sentence.endswith("kept calibration")


def test_an_upload_of_another_field_of_view_is_unfamiliar_and_says_why(store):
    from tmdafm_core.data import load_image

    pixels, pixel_nm = load_image(pipeline.load_manifest(store)["path"].iat[0])
    side = pixel_nm * pixels.shape[1]
    as_taken = tiff_bytes(pixels, resolution=(1e7 / pixel_nm,) * 2, resolutionunit="CENTIMETER")
    wider = tiff_bytes(pixels, resolution=(1e7 / (5 * pixel_nm),) * 2, resolutionunit="CENTIMETER")
    unknown = pil_bytes(np.round(pixels * 255).astype(np.uint8), "PNG")
    same, wide, png = classify.classify_uploads(store, [("a.tif", as_taken), ("b.tif", wider), ("c.png", unknown)])
    assert same["field_of_view_nm"] == pytest.approx(side) and not same["unfamiliar"]
    assert wide["field_of_view_nm"] == pytest.approx(5 * side) and wide["unfamiliar"]
    assert same["training_field_of_view_nm"] == [pytest.approx(side)] * 2
    assert f"({5 * side / 1000:.2f} µm) is 5.0 times the largest the models trained on" in classify.trust_sentence(wide)
    assert png["field_of_view_nm"] is None  # a PNG says nothing of its size: no scale check
    assert "field of view" not in classify.trust_sentence(same) + classify.trust_sentence(png)


def test_instrument_files_are_levelled_cropped_and_classified_from_a_private_temporary_file(store, tmp_path,
                                                                                           monkeypatch):
    import tempfile

    from tmdafm_core.data import scans

    from .test_scans import BRUKER, JPK, tilted_film, write_gwy

    gwy = write_gwy(tmp_path / "MoS2 film.gwy", tilted_film(200), side_m=2e-6).read_bytes()
    seen = []
    original = scans.prepare_scan
    monkeypatch.setattr(scans, "prepare_scan", lambda path, **kw: seen.append(Path(path)) or original(path, **kw))
    results = classify.classify_uploads(store, [("MoS2 film.gwy", gwy), ("scan.002", BRUKER.read_bytes()),
                                                ("qi.jpk-qi-image", JPK.read_bytes()), ("x.ibw", b"not igor")])
    good, coarse, small, broken = results
    assert good["ok"] and good["width"] == good["height"] == 100 and good["pixel_size_nm"] == pytest.approx(10.0)
    scan = good["scan"]
    assert scan["format"] == "gwyddion" and scan["channel"] == "Height" and scan["scan_width_um"] == pytest.approx(2)
    assert (scan["crop_x0_um"], scan["crop_x1_um"]) == (0.5, 1.5) and scan["overview_uri"].startswith("data:image/png")
    assert not coarse["ok"] and coarse["message"].startswith("a 1 µm crop would be 17 px, under 32 px a side")
    assert not small["ok"] and "smaller than a 1 µm crop" in small["message"]
    assert not broken["ok"] and "tmdafm-upload" not in broken["message"]
    # Read from a random name in a private folder that is gone afterwards, never under the uploaded name.
    assert len(seen) == 4 and all(p.parent.name.startswith("tmdafm-upload-") and p.stem != "MoS2 film" for p in seen)
    assert not any(p.exists() for p in seen)
    assert not list(Path(tempfile.gettempdir()).glob("tmdafm-upload-*"))
    table = classify.results_table(results)
    assert table.loc[0, "scan_format"] == "gwyddion" and table.loc[0, "scan_crop_x0_um"] == 0.5
    import app as app_module

    app_module.app.server.test_client().get("/")
    from pages import classify as page

    card = page.result_card(store, good, 0, {})
    text = str(card.to_plotly_json())
    assert "levelled scan" in text and "red box: the classified crop, x 0.5–1.5 µm" in text
