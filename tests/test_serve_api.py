"""The HTTP API against the app in process (FastAPI's TestClient): results checked against numpy brute force
and the offline pipeline, every bad request a 4xx that changes nothing, writes, keys, metrics, readiness."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from offshelf.extract import Embedder
from offshelf.probe import LinearProbe
from offshelf.probe.estimator import save_probe
from offshelf.search import Searcher
from offshelf.serve import ServeConfig, create_app
from offshelf.store import FeatureStore, path_id
from offshelf.store.feature_store import write_manifest
from tests.serve_fixtures import edited_copy, exact_top, photo_store, png_bytes, store_copy, store_files  # noqa: F401

Client = Callable[..., TestClient]


@pytest.fixture(autouse=True)
def _no_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OFFSHELF_API_KEY", raising=False)


@contextmanager
def running(store: Path, **options: object) -> Iterator[TestClient]:
    """The app on `store`, started, once its model is loaded (or failed to load)."""
    with TestClient(create_app(ServeConfig(store=store, **options))) as client:  # type: ignore[arg-type]
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            if client.get("/readyz").json().get("reason", "").startswith("model failed"):
                break
            time.sleep(0.05)
        yield client


@pytest.fixture
def client(store_copy: Path) -> Iterator[TestClient]:
    with running(store_copy) as c:
        yield c


def _image(data: bytes, name: str = "query.png", content_type: str = "image/png") -> dict[str, tuple[str, bytes, str]]:
    return {"image": (name, data, content_type)}


def test_search_by_edited_copy_finds_the_original_and_matches_brute_force(client: TestClient, store_copy: Path,
                                                                          photos: list[Path]) -> None:
    _, paths, _ = FeatureStore.open(store_copy).vectors()
    original = next(p for p in paths if Path(p).name == photos[0].name)
    query = edited_copy(original)
    answer = client.post("/v1/search", files=_image(query), data={"k": "5"})
    assert answer.status_code == 200, answer.text
    hits = answer.json()["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert hits[0]["path"] == original and hits[0]["id"] == path_id(original)
    vector = Embedder(FeatureStore.open(store_copy).config).embed_images([Image.open(io.BytesIO(query))])[0]
    ids, scores = exact_top(store_copy, vector, 5)
    assert [h["id"] for h in hits] == ids
    np.testing.assert_allclose([h["score"] for h in hits], scores, atol=1e-4)
    assert answer.json()["took_ms"] > 0


def test_search_by_id_returns_the_item_first_then_its_exact_neighbours(client: TestClient, store_copy: Path) -> None:
    ids, paths, vectors = FeatureStore.open(store_copy).vectors()
    answer = client.post("/v1/search", json={"id": int(ids[3]), "k": 4})
    assert answer.status_code == 200, answer.text
    hits = answer.json()["hits"]
    expected_ids, expected_scores = exact_top(store_copy, vectors[3], 4)
    assert [h["id"] for h in hits] == expected_ids and hits[0]["path"] == paths[3]
    np.testing.assert_allclose([h["score"] for h in hits], expected_scores, atol=1e-5)
    assert answer.json()["query"] == {"id": int(ids[3])}


def test_min_score_and_prefix_filter_like_the_reference(client: TestClient, store_copy: Path) -> None:
    ids, paths, vectors = FeatureStore.open(store_copy).vectors()
    all_ids, all_scores = exact_top(store_copy, vectors[0], len(ids))
    cutoff = float(all_scores[3] - 1e-4)  # keeps exactly the 4 best
    answer = client.post("/v1/search", json={"id": int(ids[0]), "k": 50, "min_score": cutoff}).json()
    assert [h["id"] for h in answer["hits"]] == all_ids[:4]
    wanted = paths[5]
    answer = client.post("/v1/search", json={"id": int(ids[0]), "k": 3, "prefix": wanted}).json()
    assert [h["path"] for h in answer["hits"]] == [wanted] and answer["hits"][0]["rank"] == 1
    form = client.post("/v1/search", files=_image(Path(paths[2]).read_bytes()), data={"k": "2", "min_score": "0.99"})
    assert [h["path"] for h in form.json()["hits"]] == [paths[2]]


def test_embed_equals_the_offline_pipeline(client: TestClient, store_copy: Path) -> None:
    store = FeatureStore.open(store_copy)
    _, paths, vectors = store.vectors()
    answer = client.post("/v1/embed", files=_image(Path(paths[1]).read_bytes(), content_type="application/pdf"))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model"], body["layer"], body["pool"], body["dim"]) == ("efficientnet-lite0", "head", "gap", 1280)
    np.testing.assert_allclose(body["embedding"], vectors[1], atol=1e-5)  # the content type was ignored


def _bomb() -> bytes:
    out = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(out, "PNG")  # 100 MP in a few kB
    return out.getvalue()


def test_every_bad_request_is_a_clear_4xx_and_changes_nothing(client: TestClient, store_copy: Path,
                                                              photos: list[Path]) -> None:
    before = store_files(store_copy)
    real = photos[0].read_bytes()
    some_id = int(FeatureStore.open(store_copy).vectors()[0][0])
    cases = [
        (client.post("/v1/search", files=_image(b"")), 400, "empty"),
        (client.post("/v1/search", files=_image(b"%PDF-1.4 not an image")), 422, "not an image"),
        (client.post("/v1/search", files=_image(real[: len(real) // 3])), 422, "truncated"),
        (client.post("/v1/search", files=_image(_bomb())), 413, "too many pixels"),
        (client.post("/v1/search", files=_image(real), data={"k": "0"}), 422, "k: Input should be greater"),
        (client.post("/v1/search", files=_image(real), data={"k": "many"}), 422, "k: Input should be a valid integer"),
        (client.post("/v1/search", json={"id": some_id, "k": 1001}), 422, "k: Input should be less than"),
        (client.post("/v1/search", json={"id": some_id, "min_score": 2}), 422, "min_score"),
        (client.post("/v1/search", json={"id": 12345}), 404, "no item with id 12345"),
        (client.post("/v1/search", json={"k": 3}), 422, "id: Field required"),
        (client.post("/v1/search", content=b"{nope", headers={"content-type": "application/json"}), 400, "not valid JSON"),
        (client.post("/v1/search", content=b"k=3", headers={"content-type": "text/plain"}), 415, "multipart/form-data"),
        (client.post("/v1/search", data={"k": "3"}, files={"other": ("x", b"y")}), 422, "file part named image"),
        (client.post("/v1/embed", files=_image(b"GIF89a\x01")), 422, "not a usable image"),
        (client.post("/v1/items", files=_image(b"plain text")), 422, "not an image"),
        (client.get("/v1/items/12345"), 404, "no item with id 12345"),
        (client.get("/v1/items/12345/thumbnail"), 404, "no item"),
        (client.get("/v1/items/..%2F..%2Fetc%2Fpasswd/thumbnail"), 404, "Not Found"),
        (client.get("/v1/items/etc.passwd/thumbnail"), 422, "item_id"),
        (client.get(f"/v1/items/{some_id}/thumbnail?size=5000"), 422, "size"),
        (client.delete("/v1/items/12345"), 404, "no item with id 12345"),
        (client.delete("/v1/items/-1"), 422, "item_id"),
        (client.post("/v1/classify", files=_image(real)), 404, "--probe"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, (response.request.url, response.text)
        detail = response.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and words in detail, detail
    assert store_files(store_copy) == before


def test_uploads_above_the_limit_get_413_before_being_stored(store_copy: Path, photos: list[Path]) -> None:
    before = store_files(store_copy)
    big = photos[0].read_bytes()
    with running(store_copy, max_upload_bytes=len(big) - 1) as client:
        for path in ("/v1/search", "/v1/items", "/v1/embed"):
            answer = client.post(path, files=_image(big))
            assert answer.status_code == 413, answer.text
            assert "limit" in answer.json()["detail"] or "large" in answer.json()["detail"]
        huge = client.post("/v1/search", content=b"x" * (len(big) + 200_000), headers={"content-type": "application/json"})
        assert huge.status_code == 413
    assert store_files(store_copy) == before


def test_add_then_remove_an_item(client: TestClient, store_copy: Path, photos: list[Path]) -> None:
    data = png_bytes(Image.open(photos[1]).convert("RGB").rotate(90, expand=True))
    added = client.post("/v1/items", files=_image(data, "../../../etc/passwd.png"), data={"name": "../../evil/na me"})
    assert added.status_code == 201, added.text
    item = added.json()
    path = Path(item["path"])
    assert path.parent == (store_copy / "uploads").resolve() and path.suffix == ".png"
    assert ".." not in path.name and "/" not in path.name and path.name.endswith("-na-me.png")
    assert item["id"] == path_id(str(path)) and path.read_bytes() == data
    found = client.post("/v1/search", files=_image(data), data={"k": "1"}).json()["hits"]
    assert found[0]["id"] == item["id"] and found[0]["score"] > 0.9999
    assert item["id"] in Searcher(store_copy).index.ids()  # committed to the store and its saved index
    assert client.get(f"/v1/items/{item['id']}").json()["uploaded"] is True
    thumb = client.get(f"/v1/items/{item['id']}/thumbnail?size=64")
    assert thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 64

    removed = client.delete(f"/v1/items/{item['id']}")
    assert removed.status_code == 200 and removed.json()["removed"] is True
    assert not path.exists()
    assert client.post("/v1/search", json={"id": item["id"]}).status_code == 404
    assert item["id"] not in FeatureStore.open(store_copy).vectors()[0]
    assert all(h["id"] != item["id"] for h in client.post("/v1/search", files=_image(data)).json()["hits"])

    other = int(FeatureStore.open(store_copy).vectors()[0][0])
    FeatureStore.open(store_copy).remove(ids=[other])  # as `offshelf remove` in another process would
    gone = client.delete(f"/v1/items/{other}")
    assert gone.status_code == 404 and f"no item with id {other}" in gone.text, gone.text
    assert client.post("/v1/search", json={"id": other}).status_code == 404


def test_writes_need_the_key_when_one_is_set(store_copy: Path, photos: list[Path],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFSHELF_API_KEY", "s3cret")
    before = store_files(store_copy)
    data = png_bytes(Image.open(photos[2]).convert("RGB").resize((200, 150)))
    assert ServeConfig(store=store_copy).api_key == "s3cret"
    with running(store_copy) as client:
        some_id = int(FeatureStore.open(store_copy).vectors()[0][0])
        missing = client.post("/v1/items", files=_image(data))
        wrong = client.delete(f"/v1/items/{some_id}", headers={"X-API-Key": "guess"})
        assert (missing.status_code, wrong.status_code) == (401, 403)
        assert "X-API-Key" in missing.json()["detail"] and "not the server's" in wrong.json()["detail"]
        assert store_files(store_copy) == before
        assert client.get(f"/v1/items/{some_id}").status_code == 200  # reads stay open
        added = client.post("/v1/items", files=_image(data), headers={"X-API-Key": "s3cret"})
        assert added.status_code == 201, added.text


def test_classify_with_a_probe_matches_the_probe_itself(store_copy: Path, tmp_path: Path) -> None:
    store = FeatureStore.open(store_copy)
    _, paths, vectors = store.vectors()
    labels = ["first half" if i < len(paths) // 2 else "second half" for i in range(len(paths))]
    probe = LinearProbe(method="logreg", cv=2).fit(vectors, labels)
    save_probe(probe, tmp_path / "probe", store.config.identity())
    with running(store_copy, probe=tmp_path / "probe") as client:
        answer = client.post("/v1/classify", files=_image(Path(paths[0]).read_bytes()))
        assert answer.status_code == 200, answer.text
        got = answer.json()["labels"]
    scores = probe.decision_function(vectors[:1])[0]
    expected = [str(probe.classes_[i]) for i in np.argsort(-scores)]
    assert [g["label"] for g in got] == expected
    np.testing.assert_allclose(sorted((g["score"] for g in got), reverse=True), sorted(scores, reverse=True), atol=1e-4)
    assert abs(sum(g["probability"] for g in got) - 1) < 1e-5


def test_a_model_that_fails_to_load_gives_503_not_500_and_id_search_still_works(store_copy: Path) -> None:
    manifest = store_copy / "manifest.json"
    data = json.loads(manifest.read_text())
    data["model_spec"] = {**data["model_spec"], "name": "no-such-model", "source": {"kind": "no-such-source"}}
    write_manifest(store_copy, {k: v for k, v in data.items() if k != "sha256"})  # well-formed, checksummed
    with running(store_copy) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["reason"].startswith("model failed to load")
        answer = client.post("/v1/embed", files=_image(b"\x89PNG"))
        assert answer.status_code == 503 and "failed to load" in answer.json()["detail"]
        some_id = int(FeatureStore.open(store_copy).vectors()[0][0])
        assert client.post("/v1/search", json={"id": some_id, "k": 2}).status_code == 200
        assert client.get("/healthz").json() == {"status": "ok"}


def test_metrics_count_requests_by_route_and_status_and_model_batches(client: TestClient, photos: list[Path]) -> None:
    for _ in range(3):
        assert client.post("/v1/embed", files=_image(photos[0].read_bytes())).status_code == 200
    client.get("/v1/items/1")
    text = client.get("/metrics").text
    assert 'offshelf_http_requests_total{method="POST",route="/v1/embed",status="200"} 3.0' in text
    assert 'offshelf_http_requests_total{method="GET",route="/v1/items/{item_id}",status="404"} 1.0' in text
    assert "offshelf_model_batch_size_count 3.0" in text
    assert f"offshelf_index_items {float(len(photos))}" in text


def test_stats_report_items_model_and_index_recall(client: TestClient, photos: list[Path]) -> None:
    stats = client.get("/v1/stats").json()
    assert stats["items"] == len(photos) and stats["model"] == "efficientnet-lite0" and stats["dim"] == 1280
    assert stats["index"]["kind"] == "flat" and stats["index"]["recall_at_1"] == 1.0
    assert stats["index"]["items"] == len(photos)  # measured on the store as it is


def test_recall_is_measured_again_only_after_the_count_moves_by_one_percent() -> None:
    from offshelf.serve.service import recall_is_stale

    assert not recall_is_stale(1_000_000, 1_000_000 + 10_000) and recall_is_stale(1_000_000, 1_000_000 - 10_001)
    assert recall_is_stale(17, 18) and not recall_is_stale(17, 17)  # a small store: every write counts


def test_cors_is_off_unless_origins_are_given(store_copy: Path) -> None:
    origin = {"Origin": "http://example.org"}
    with running(store_copy) as client:
        assert "access-control-allow-origin" not in client.get("/healthz", headers=origin).headers
    with running(store_copy, cors_origins=("http://example.org",)) as client:
        assert client.get("/healthz", headers=origin).headers["access-control-allow-origin"] == "http://example.org"


def test_page_and_openapi_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "searchById" in client.get("/static/app.js").text
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/search", "/v1/embed", "/v1/classify", "/v1/items", "/v1/items/{item_id}",
            "/v1/items/{item_id}/thumbnail", "/v1/stats", "/healthz", "/readyz", "/metrics"} <= set(paths)
    assert client.get("/docs").status_code == 200


def test_the_batcher_fills_batches_up_to_max_batch_and_returns_each_requests_own_vector(
        store_copy: Path, photos: list[Path]) -> None:
    import asyncio

    from offshelf.serve import DynamicBatcher

    embedder = Embedder(FeatureStore.open(store_copy).config)
    sizes: list[int] = []
    waits: list[float] = []

    async def run() -> list[np.ndarray]:
        batcher = DynamicBatcher(lambda: embedder, max_batch=4, max_wait_ms=500, max_pixels=10**8, workers=2,
                                 observe=lambda size, w, _: (sizes.append(size), waits.extend(w)))
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.embed(p.read_bytes()) for p in photos[:6]))
        finally:
            await batcher.close()

    vectors = asyncio.run(run())
    assert sorted(sizes, reverse=True) == [4, 2] and len(waits) == 6
    assert max(waits) >= 0.45  # the last, unfilled batch waited for max_wait_ms before it ran
    np.testing.assert_allclose(np.stack(vectors), embedder.embed_files(photos[:6]), atol=1e-5)


def test_serve_without_the_serve_extra_is_a_clear_usage_error(store_copy: Path) -> None:
    """Without FastAPI installed (simulated: the import is blocked), `offshelf serve` exits 2 naming the extra."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['fastapi'] = None; from offshelf.cli import main; "
            f"sys.exit(main(['serve', '--store', {str(store_copy)!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "offshelf: error: offshelf serve needs fastapi: pip install 'offshelf[serve]'"
