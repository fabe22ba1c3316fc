"""`offshelf serve` as a user meets it: a real server on a loopback port, concurrent clients (dynamic batching,
writes during searches), the search page in headless Chromium, and schemathesis against the OpenAPI schema."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from benchmarks.harness.serve_process import ServerProcess
from offshelf.store import FeatureStore
from tests.serve_fixtures import (  # noqa: F401
    edited_copy,
    live_server,
    live_store,
    photo_store,
    png_bytes,
    store_copy,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
ARTIFACTS = Path(os.environ.get("OFFSHELF_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "build" / "test-artifacts"))

LOADED = "[...document.querySelectorAll('#results img')].every((img) => img.complete && img.naturalWidth > 0)"


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_cli_announces_the_server_and_concurrent_images_are_batched(live_server: ServerProcess,
                                                                    live_store: Path) -> None:
    announced = json.loads(live_server.announced)
    assert announced["url"] == live_server.url and announced["items"] == len(FeatureStore.open(live_store))
    _, paths, vectors = FeatureStore.open(live_store).vectors()

    async def embed_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=live_server.url, timeout=60) as client:
            uploads = [client.post("/v1/embed", files={"image": ("q", Path(p).read_bytes())}) for p in paths * 2]
            return await asyncio.gather(*uploads)

    answers = asyncio.run(embed_all())
    assert [a.status_code for a in answers] == [200] * len(answers)
    got = np.array([a.json()["embedding"] for a in answers])
    np.testing.assert_allclose(got, np.concatenate([vectors, vectors]), atol=1e-5)  # same as the offline pipeline
    text = httpx.get(live_server.url + "metrics").text
    batches = _metric(text, "offshelf_model_batch_size_count")
    assert _metric(text, "offshelf_model_batch_size_sum") == len(answers)
    assert batches < len(answers), "concurrent images should share model batches"


def test_writes_during_searches_are_safe(live_server: ServerProcess, live_store: Path, photos: list[Path]) -> None:
    uploads = [png_bytes(Image.open(photos[i]).convert("RGB").resize((160 + 8 * i, 120))) for i in range(4)]
    store = FeatureStore.open(live_store)
    some_id, items_before = int(store.vectors()[0][0]), len(store)

    async def mixed() -> tuple[list[httpx.Response], list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=live_server.url, timeout=120) as client:
            adds = [client.post("/v1/items", files={"image": (f"u{i}.png", d)}) for i, d in enumerate(uploads)]
            searches = [client.post("/v1/search", json={"id": some_id, "k": 5}) for _ in range(24)]
            done = await asyncio.gather(*adds, *searches)
            return list(done[: len(adds)]), list(done[len(adds):])

    added, searched = asyncio.run(mixed())
    assert [a.status_code for a in added] == [201] * 4, [a.text for a in added]
    assert [s.status_code for s in searched] == [200] * 24
    assert all(s.json()["hits"][0]["id"] == some_id for s in searched)
    assert len(FeatureStore.open(live_store)) == items_before + 4
    for answer, data in zip(added, uploads):
        hit = httpx.post(live_server.url + "v1/search", files={"image": ("q.png", data)}, data={"k": "1"}).json()
        assert hit["hits"][0]["id"] == answer.json()["id"]


def test_the_page_finds_an_edited_photo_and_searches_by_a_result(live_server: ServerProcess, live_store: Path,
                                                                  tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    _, paths, _ = FeatureStore.open(live_store).vectors()
    original = next(p for p in paths if Path(p).name == "coffee.png")
    query = tmp_path / "edited-copy.png"
    query.write_bytes(edited_copy(original))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(live_server.url)
            expect(page.locator("#stats")).to_contain_text(f"{len(paths)} images")
            page.set_input_files("#file", str(query))
            first = page.locator("#results li").first
            expect(first.locator(".path")).to_have_text(original, timeout=60_000)
            expect(page.locator("#status")).to_contain_text("results in")
            first.locator("a").click()
            expect(page).to_have_url(re.compile(r"\?id=\d+"))
            item_id = re.search(r"id=(\d+)", page.url).group(1)  # type: ignore[union-attr]
            expect(page.locator("#results li").first.locator(".score")).to_have_text("1.000", timeout=30_000)
            expect(page.locator("#results li").first.locator("a")).to_have_attribute("href", f"?id={item_id}")
            page.wait_for_function(LOADED)
            page.screenshot(path=str(ARTIFACTS / "serve-page-desktop.png"), full_page=True)

            shared = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
            shared.goto(page.url)  # the URL keeps the query: opening it shows the same results
            expect(shared.locator("#results li").first.locator(".path")).to_have_text(original, timeout=30_000)
            assert shared.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            shared.wait_for_function(LOADED)
            shared.screenshot(path=str(ARTIFACTS / "serve-page-phone.png"))

            (tmp_path / "broken.png").write_text("a text file named like a picture")
            shared.set_input_files("#file", str(tmp_path / "broken.png"))
            expect(shared.locator("#status")).to_have_class("error")
            expect(shared.locator("#status")).to_contain_text("not a usable image")
        finally:
            browser.close()
    assert (ARTIFACTS / "serve-page-desktop.png").stat().st_size > 10_000


def test_fuzzing_the_openapi_schema_finds_no_server_error(store_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import schemathesis
    from fastapi.testclient import TestClient
    from hypothesis import HealthCheck, given, settings

    from offshelf.serve import ServeConfig, create_app

    monkeypatch.delenv("OFFSHELF_API_KEY", raising=False)
    app = create_app(ServeConfig(store=store_copy))
    with TestClient(app):  # runs the lifespan: the model loads, the batcher starts
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        failures: list[str] = []
        for operation in schema.get_all_operations():
            op = operation.ok()

            @settings(max_examples=12, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy())
            def check(case: object) -> None:
                response = case.call()  # type: ignore[attr-defined]
                if response.status_code >= 500:
                    failures.append(f"{op.method.upper()} {op.path}: {response.status_code} {response.text[:200]}")

            check()
    assert failures == []


def test_demo_serve_serves_the_demo_store_and_opens_the_page(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    from benchmarks.harness.serve_process import ROOT, free_port

    port, opened = free_port(), tmp_path / "opened.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
           "BROWSER": f"sh -c 'echo %s > {opened}'"}  # the "browser" writes down the address it was given
    command = [sys.executable, "-m", "offshelf.cli", "demo", "--store", str(tmp_path / "demo"), "--quiet", "--serve",
               "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (opened.is_file() and opened.read_text().strip()) and time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read()  # type: ignore[union-attr]
            time.sleep(0.3)
        url = f"http://127.0.0.1:{port}/"
        assert opened.read_text().strip() == url
        assert "offshelf search" in httpx.get(url).text
        assert httpx.get(url + "v1/stats").json()["items"] == len(FeatureStore.open(tmp_path / "demo"))
    finally:
        process.terminate()
        process.wait(timeout=30)
