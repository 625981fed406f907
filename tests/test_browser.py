"""cvf's three web pages in a real browser (Debian's Chromium driven by Playwright):
the model demo (`python -m model.demo`), the Label Studio labeling page and the dataset card.

Each test writes a screenshot of its page (see the `screenshots` fixture; README shows the
committed ones). Nothing here leaves 127.0.0.1 or the file system; the tests check that too.
"""
from __future__ import annotations

import base64
import io
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model import demo, tasks

try:
    from playwright.sync_api import expect
except ImportError:      # the `browser` fixture skips (or, in CI, fails) with the reason
    expect = None
from model.prompting import (cell_size, inpaint, make_canvas, normalize, patch_mask_to_pixels,
                             quadrant_mask)
from reference_vectors import set_dir
from test_evaluate import released_checkpoint


def save_screenshot(page, path: Path) -> None:
    """A small PNG of what the page shows (256 colours: screenshots of pages compress well)."""
    shot = Image.open(io.BytesIO(page.screenshot()))
    shot.convert("RGB").quantize(256).save(path, optimize=True)


def only_local(urls: list[str], origin: str) -> list[str]:
    """The requests that went anywhere but `origin` (data: and blob: URLs stay in the page)."""
    return [u for u in urls if not u.startswith((origin, "data:", "blob:"))]


# --- the model demo ---------------------------------------------------------------------------

VOC_IMAGES = ("2007_000033", "2008_004630")


@pytest.fixture(scope="module")
def checkpoint(testdata, tmp_path_factory):
    return released_checkpoint(set_dir(testdata, "set_a"), tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def pictures(testdata, tmp_path_factory):
    """An --examples folder of real photos: one (photo, white-on-black mask) pair, two queries."""
    folder = tmp_path_factory.mktemp("pictures")
    voc = testdata / "voc"
    with Image.open(voc / "SegmentationClassAug" / f"{VOC_IMAGES[0]}.png") as m:
        mask = np.array(m)
    (folder / "a_plane.jpg").write_bytes((voc / "JPEGImages" / f"{VOC_IMAGES[0]}.jpg").read_bytes())
    Image.fromarray(np.where(mask == 1, 255, 0).astype(np.uint8)).save(folder / "a_plane_out.png")
    queries = sorted((voc / "JPEGImages").glob("*.jpg"))[:2]
    for q in queries:
        (folder / f"q_{q.name}").write_bytes(q.read_bytes())
    return folder


@pytest.fixture(scope="module")
def demo_server(checkpoint, pictures, tmp_path_factory):
    """`model.demo`'s server on a free port, serving the set_a weights on the CPU; "load model"
    may read from the tests' temporary folders."""
    from model.evaluate import read_arch

    model = demo.load_model(checkpoint["ckpt"], checkpoint["yaml"], read_arch(str(checkpoint["arch"])),
                            checkpoint["size"])
    examples = [demo.folder_examples(pictures), demo.synthetic_examples("color")]
    state = demo.Demo(model, str(checkpoint["ckpt"]), str(checkpoint["yaml"]), torch.device("cpu"),
                      examples, allowed=[tmp_path_factory.getbasetemp()])
    server = demo.make_server(state, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{server.server_address[1]}", "model": model, "state": state}
    server.shutdown()
    server.server_close()


def expected_pasted(model, pair: tuple[Path, Path], queries: list[Path]) -> np.ndarray:
    """`model.prompting.inpaint` on the released 2x2 canvases of these files (one batch, as the
    demo runs a request's queries), independently of the demo: PIL bicubic to the cell (as the
    evaluation's loaders), float64 normalisation, under the evaluation's arithmetic
    (`ExactArithmetic`: attention as released, no TF32)."""
    from model.evaluate import ExactArithmetic

    size = model.patch_embed.img_size
    side = cell_size(size)

    def cell(path):
        with Image.open(path) as img:
            return tasks.to_tensor(img.convert("RGB").resize((side, side), Image.BICUBIC))

    canvases = torch.stack([make_canvas(cell(pair[0]), cell(pair[1]), cell(q), size=size) for q in queries])
    with ExactArithmetic():
        return inpaint(model, normalize(canvases, torch.float64)).numpy()


def image_of(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    return np.array(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


def open_demo(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)


def run_and_wait(page, expect_rows: int) -> list[list[str]]:
    """Press Run; -> per result row the data URLs of (prompt, answer, pasted)."""
    page.click("#run")
    page.wait_for_function(f"document.querySelectorAll('tr.result').length === {expect_rows}"
                           " || getComputedStyle(document.getElementById('error')).display !== 'none'",
                           timeout=60_000)
    assert not page.is_visible("#error"), page.inner_text("#error")
    return page.eval_on_selector_all(
        "tr.result", "rows => rows.map(r => [...r.querySelectorAll('img')].map(i => i.src))")


def test_demo_page_paints_what_inpaint_paints(page, demo_server, pictures, testdata, screenshots):
    url, model = demo_server["url"], demo_server["model"]
    open_demo(page, url)
    assert "CPU" in page.inner_text("#model")
    # The folder example is loaded first: one pair, two queries, the released 2x2 canvas.
    assert page.input_value("#layout") == "horizontal"
    pair = (pictures / "a_plane.jpg", pictures / "a_plane_out.png")
    queries = sorted(pictures.glob("q_*.jpg"))
    # ... and a query uploaded by hand replaces the second one
    upload = testdata / "voc" / "JPEGImages" / f"{VOC_IMAGES[1]}.jpg"
    page.set_input_files("[data-testid=query2] input[type=file]", str(upload))
    page.wait_for_function("document.querySelector('[data-testid=query2]').dataset.value"
                           ".length > 1000")
    rows = run_and_wait(page, 2)
    size = model.patch_embed.img_size
    c = size - cell_size(size)
    expected = expected_pasted(model, pair, [queries[0], upload])
    for (prompt, answer, pasted), want in zip(rows, expected):
        got = image_of(pasted)
        assert got.shape == want.shape == (size, size, 3)
        assert np.array_equal(got, want)                       # pixel-identical
        assert np.array_equal(image_of(answer), want[c:, c:])  # the predicted quadrant
        shown, hidden = image_of(prompt), patch_mask_to_pixels(quadrant_mask(size, 16), size, 16)
        assert (shown[hidden.numpy()] == 128).all()
        assert np.array_equal(shown[~hidden.numpy()], want[~hidden.numpy()])   # outside: as given
    status = page.inner_text("#status")
    assert "2 queries on CPU" in status and status.endswith(" s")

    with page.expect_download() as download:
        page.click("tr.result >> nth=0 >> a[download$='_pasted.png']")
    saved = download.value.path()
    assert download.value.suggested_filename == "query1_pasted.png"
    assert np.array_equal(np.array(Image.open(saved)), image_of(rows[0][2]))
    save_screenshot(page, screenshots / "demo.png")
    assert only_local(page.requested_urls, url) == []


def test_demo_page_runs_the_synthetic_tasks(page, demo_server):
    open_demo(page, demo_server["url"])
    page.select_option("#example-set", label="synthetic: color")
    page.click("#load-example")
    page.wait_for_function("document.querySelectorAll('#queries .slot').length === 3 && "
                           "[...document.querySelectorAll('.slot')].every(s => s.dataset.value)")
    assert page.input_value("#layout") == "rows-black"
    rows = run_and_wait(page, 3)
    size = demo_server["model"].patch_embed.img_size
    for prompt, answer, pasted in rows:
        assert image_of(pasted).shape == (size, size, 3)
        assert 0 < image_of(answer).shape[0] < size // 2


def huge_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb; the pixels never come)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def test_demo_page_says_what_is_wrong_and_keeps_working(page, demo_server, tmp_path):
    open_demo(page, demo_server["url"])
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is text, not a picture")
    large, bomb = tmp_path / "large.png", tmp_path / "bomb.png"
    large.write_bytes(huge_png(9_000, 9_000))
    bomb.write_bytes(huge_png(30_000, 30_000))
    for path, message in [(not_an_image, "query 1 is not an image"),
                          (large, "query 1 is 9000 x 9000 pixels, over the 50 megapixel limit"),
                          (bomb, "query 1 is over the 50 megapixel limit")]:
        page.set_input_files("[data-testid=query1] input[type=file]", str(path))
        page.wait_for_timeout(300)
        page.click("#run")
        page.wait_for_selector("#error", state="visible", timeout=30_000)
        assert message in page.inner_text("#error")
    # a checkpoint that does not load: a message, and the loaded model keeps serving
    page.click("summary")
    page.fill("#ckpt", str(not_an_image))
    page.click("#load-model")
    page.wait_for_function("document.getElementById('error').textContent.includes('notes.png')")
    error = page.inner_text("#error")
    assert error.startswith(str(not_an_image)) and "\n" not in error.strip()
    page.fill("#ckpt", str(tmp_path / "nowhere.pth"))
    page.click("#load-model")
    page.wait_for_function("document.getElementById('error').textContent.includes('not found')")
    assert "Traceback" not in page.content()
    assert demo_server["state"].checkpoint != str(not_an_image)
    page.click("#load-example")
    page.wait_for_function("[...document.querySelectorAll('.slot')].every(s => s.dataset.value)")
    assert len(run_and_wait(page, 2)) == 2


def test_demo_cli_bad_checkpoint_is_one_error_line(checkpoint, tmp_path, capsys):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    assert demo.main(["--checkpoint", str(junk), "--vqgan-config", str(checkpoint["yaml"]),
                      "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    # another arch than the weights': said, not raised
    assert demo.main(["--checkpoint", str(checkpoint["ckpt"]), "--vqgan-config",
                      str(checkpoint["yaml"]), "--arch", "mae_vit_small_patch16", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not fit --arch" in err and err.count("\n") == 1


# --- Label Studio ------------------------------------------------------------------------------

def test_label_studio_three_labels_by_keyboard(page, label_studio, monkeypatch, screenshots):
    from labeling import interface, pull, push
    from labeling.client import connect, export_tasks
    from pipeline.store import read_rows
    from test_labeling import small_corpus

    url = label_studio["url"]
    root = label_studio["docroot"] / "browser"
    root.mkdir()
    monkeypatch.setenv("CVF_LABEL_STUDIO_DOCUMENT_ROOT", str(label_studio["docroot"]))
    small_corpus(root)
    client = connect(url, label_studio["token"])
    title = "cvf browser labeling"
    project_id = push.push(client, root, count=4, title=title)["project_id"]

    page.goto(f"{url}/user/login")
    page.fill("input[name=email]", "cvf@cvf.local")
    page.fill("input[name=password]", (label_studio["server_dir"] / "password").read_text().strip())
    page.press("input[name=password]", "Enter")
    page.wait_for_url(lambda u: "/user/login" not in u, timeout=60_000)
    page.goto(f"{url}/projects/{project_id}/data?labeling=1")
    # the instructions the project was made with are on the page
    page.get_by_text("is this figure", exact=False).first.wait_for(timeout=60_000)
    page.keyboard.press("Escape")                     # close the instructions

    keys = ["1", "2", "3"]
    radios = page.get_by_role("radio")
    for done, key in enumerate(keys, start=1):
        page.get_by_text("Figure file").wait_for(timeout=60_000)
        page.wait_for_timeout(700)                    # an annotator's (short) look at the figure
        page.keyboard.press(key)
        expect(radios.nth(int(key) - 1)).to_be_checked(timeout=10_000)
        if done == 1:
            save_screenshot(page, screenshots / "labeling.png")
        with page.expect_response(lambda r: "next_task" in r.url, timeout=60_000):
            page.keyboard.press("Control+Enter")      # submit; Label Studio loads the next task
        deadline = time.monotonic() + 30
        while sum(len(t["annotations"]) for t in export_tasks(client, project_id)) < done:
            assert time.monotonic() < deadline, f"label {done} never reached Label Studio"
            time.sleep(0.3)

    annotations = sorted((a for t in export_tasks(client, project_id) for a in t["annotations"]),
                         key=lambda a: a["id"])
    pulled = pull.pull(client, root, title)
    assert (pulled["labels"], pulled["positive"], pulled["negative"], pulled["unsure"]) == (3, 1, 1, 1)
    rows = {r["annotation_id"]: r for r in read_rows(pull.labels_path(root))}
    assert sorted(rows) == [a["id"] for a in annotations]
    by_key = {hotkey: interface.CHOICES[value][1] for value, hotkey in
              [("Grid with a photo", "1"), ("Not a photo grid", "2"), ("Unsure", "3")]}
    for key, annotation in zip(keys, annotations):
        row = rows[annotation["id"]]
        assert row["choice"] == by_key[key]
        assert row["lead_time"] == annotation["lead_time"] and row["lead_time"] > 0.5
        assert row["source"] == "label-studio"
    assert only_local(page.requested_urls, url) == []


# --- the dataset card --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def published_card(tmp_path_factory):
    """index.html of a manifest published from a small scored corpus."""
    from pipeline import publish
    from test_publish import scored_selection

    root = tmp_path_factory.mktemp("card") / "data"
    report = scored_selection(root, n_papers=12, figures_per_paper=3, seed=3, folds=2)
    assert report["per_split"]["val"]["figures"] > 0
    out = tmp_path_factory.mktemp("manifests")
    publish.publish(root, "cvf-card", out=str(out))
    return out / "cvf-card" / "index.html"


def openly_licensed_sheets(manifest: Path) -> set[str]:
    """The contact sheets the card must show: one per split holding a figure whose licence allows
    showing it (publish draws no sheet for a split without one)."""
    import pyarrow.parquet as pq

    from pipeline.licenses import allows_redistribution

    sheets = {f"contact_{split}.png" for split in ("train", "val")
              if any(map(allows_redistribution, pq.read_table(manifest / f"{split}.parquet").column("license").to_pylist()))}
    assert "contact_train.png" in sheets
    return sheets


def test_dataset_card_renders_its_tables_and_images(page, published_card, screenshots):
    page.goto(published_card.as_uri())
    page.wait_for_load_state("load")
    assert page.title() == "cvf-card"
    tables = page.locator("table")
    assert tables.count() >= 2
    assert page.locator("table tr").count() > 2 * tables.count()    # rows, not just headers
    images = page.eval_on_selector_all(
        "img", "imgs => imgs.map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
    srcs = {src for src, _, _ in images}
    assert {"year_histogram.png"} | openly_licensed_sheets(published_card.parent) <= srcs
    broken = [src for src, complete, width in images if not (complete and width > 0)]
    assert broken == []
    save_screenshot(page, screenshots / "dataset_card.png")
    assert only_local(page.requested_urls, published_card.parent.as_uri()) == []
