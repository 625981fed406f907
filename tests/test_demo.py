"""model.demo without a browser: examples from a folder, bounded image reading, the prompts it
builds. The page itself is tested in Chromium in test_browser.py."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model import demo
from model.metrics import PURPLE
from model.prompting import make_rows_canvas, rows_answer_box, rows_mask
from test_browser import huge_png


def png(colour, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def test_folder_examples_pair_by_name_and_refuse_a_folder_without_pairs(tmp_path):
    (tmp_path / "cat.png").write_bytes(png((200, 0, 0)))
    (tmp_path / "cat_out.png").write_bytes(png((255, 255, 255)))
    (tmp_path / "dog.jpg").write_bytes(png((0, 0, 200)))
    (tmp_path / "notes.txt").write_text("not an image, not listed")
    ex = demo.folder_examples(tmp_path)
    assert ex["name"] == f"folder: {tmp_path.name}" and ex["layout"] == "horizontal"
    assert ex["pairs"] == [(png((200, 0, 0)), png((255, 255, 255)))]
    assert ex["queries"] == [png((0, 0, 200))]
    (tmp_path / "cat_out.png").unlink()
    with pytest.raises(demo.DemoError, match=r"found 0 pair\(s\), 2 other image\(s\)"):
        demo.folder_examples(tmp_path)
    (tmp_path / "cat_out.png").write_bytes(b"garbage")           # said at start, not on use
    with pytest.raises(demo.DemoError, match="cat_out.png is not an image"):
        demo.folder_examples(tmp_path)


def test_read_image_checks_bytes_and_pixels_before_decoding():
    assert demo.read_image(png((1, 2, 3)), "query 1").size == (40, 30)
    with pytest.raises(demo.DemoError, match="query 1 is not an image"):
        demo.read_image(b"%PDF-1.4 not a picture", "query 1")
    with pytest.raises(demo.DemoError, match="query 1 is empty"):
        demo.read_image(b"", "query 1")
    with pytest.raises(demo.DemoError, match="8000 x 8000 pixels, over the 50 megapixel limit"):
        demo.read_image(huge_png(8000, 8000), "query 1")
    with pytest.raises(demo.DemoError, match="over the 20 MB limit"):
        demo.decode_data_url("data:image/png;base64," + "A" * (demo.MAX_IMAGE_BYTES * 2), "query 1")
    with pytest.raises(demo.DemoError, match="not base64"):
        demo.decode_data_url("data:image/png;base64,@@@", "query 1")


def test_rows_prompt_holds_every_pair_and_hides_the_last_output():
    pairs = [(Image.new("RGB", (50, 50), (0, 255, 0)), Image.new("RGB", (50, 50), (0, 0, 255)))] * 2
    query = Image.new("RGB", (80, 60), (0, 255, 0))
    prompt = demo.build_prompt(pairs, [query, query], "rows-black", size=224, patch=16)
    assert prompt.canvases.shape == (2, 1, 3, 224, 224)
    assert torch.equal(prompt.mask, rows_mask(224, 16, rows=3))
    assert prompt.answer_box == rows_answer_box(224, rows=3)
    side = 74
    cell = demo.cell_tensor
    rows = [(cell(a, side), cell(b, side)) for a, b in pairs] + [(cell(query, side), None)]
    want = make_rows_canvas(rows, size=224, background=0.0)
    assert torch.equal(prompt.canvases[0, 0], want)
    # a mask style recolours the example outputs only
    purple = demo.build_prompt(pairs, [query], "horizontal", size=224, patch=16, mask_style="purple")
    out_cell = (purple.canvases[0, 0, :, 0, -1] * 255).round().tolist()
    assert out_cell == list(PURPLE)                               # blue is darker than mid-grey
    assert purple.canvases.shape == (1, 2, 3, 224, 224)            # two pairs: two prompts, averaged


@pytest.mark.parametrize("layout, style, message", [
    ("diagonal", "as-given", "unknown layout 'diagonal'"),
    ("vertical", "sepia", "unknown mask style 'sepia'"),
])
def test_unknown_choices_are_messages(layout, style, message):
    one = Image.new("RGB", (8, 8))
    with pytest.raises(demo.DemoError, match=message):
        demo.build_prompt([(one, one)], [one], layout, mask_style=style)


def test_no_pair_or_no_query_is_a_message():
    one = Image.new("RGB", (8, 8))
    with pytest.raises(demo.DemoError, match="at least one example pair"):
        demo.build_prompt([], [one])
    with pytest.raises(demo.DemoError, match="at least one query"):
        demo.build_prompt([(one, one)], [])
    grey = Image.new("RGB", (20, 20), (200, 200, 200))             # brighter than mid-grey
    assert torch.equal(demo.output_cell(grey, "bw", 8), torch.ones(1, 8, 8))
    assert torch.equal(demo.output_cell(grey, "as-given", 8), torch.full((3, 8, 8), 200 / 255))


def test_a_pixel_mae_checkpoint_serves_the_same_page(tmp_path):
    """A pixel MAE (no VQGAN, no --vqgan-config) through the demo's one loader and its /api/run,
    answering what `inpaint` answers."""
    import argparse
    import base64

    from model import prompting
    from model.mae_vqgan import MaeVqgan

    sizes = dict(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=4,
                 decoder_embed_dim=24, decoder_depth=1, decoder_num_heads=3)
    torch.manual_seed(0)
    mae = MaeVqgan(None, target="pixels", **sizes).eval()
    torch.save({"model": mae.state_dict(), "args": argparse.Namespace(**sizes)}, tmp_path / "mae.pth")
    model = demo.load_model(tmp_path / "mae.pth", None, arch=sizes)
    state = demo.Demo(model, str(tmp_path / "mae.pth"), None, torch.device("cpu"))
    data = [f"data:image/png;base64,{base64.b64encode(png(c, (50, 50))).decode()}"
            for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    answer = state.run({"pairs": [data[:2]], "queries": [data[2]], "layout": "horizontal"})
    got = np.array(Image.open(io.BytesIO(base64.b64decode(answer["results"][0]["pasted"].split(",")[1]))))
    images = [Image.new("RGB", (50, 50), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    prompt = demo.build_prompt([(images[0], images[1])], [images[2]], "horizontal", 64, 16)
    want = prompting.inpaint(mae, prompting.normalize(prompt.canvases[:, 0], torch.float64),
                             prompt.mask)[0].numpy()
    assert np.array_equal(got, want)


def test_the_command_serves_the_page_on_loopback(testdata, tmp_path):
    """`python -m model.demo ...` as a user runs it: prints the address, serves page and API."""
    import json
    import os
    import subprocess
    import sys
    import urllib.request

    from reference_vectors import set_dir
    from test_evaluate import released_checkpoint

    ckpt = released_checkpoint(set_dir(testdata, "set_a"), tmp_path)
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen([sys.executable, "-m", "model.demo", "--checkpoint", str(ckpt["ckpt"]),
                             "--vqgan-config", str(ckpt["yaml"]), "--arch", str(ckpt["arch"]),
                             "--port", "0", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=repo)
    try:
        line = proc.stdout.readline()
        assert "on CPU" in line and "open http://127.0.0.1:" in line, proc.stderr.read()
        url = line.split("open ", 1)[1].split()[0]
        page = urllib.request.urlopen(url, timeout=30).read().decode()
        assert "<title>cvf visual prompting demo</title>" in page
        assert "http" not in page.replace(url, "")        # no outside address in the page
        info = json.load(urllib.request.urlopen(url + "api/info", timeout=30))
        assert info["size"] == ckpt["size"] and [e["name"] for e in info["examples"]][:1] == [
            "synthetic: color"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_load_answers_only_its_own_page_and_allowed_folders(tmp_path):
    """/api/load from another origin, or through another host name (DNS rebinding), is 403;
    so is a checkpoint outside the folders allowed at start. The page's own requests work."""
    import argparse
    import http.client
    import json
    import threading

    from model.mae_vqgan import MaeVqgan

    sizes = dict(img_size=32, patch_size=16, embed_dim=16, depth=1, num_heads=2,
                 decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2)
    mae = MaeVqgan(None, target="pixels", **sizes).eval()
    (tmp_path / "run").mkdir()
    (tmp_path / "elsewhere").mkdir()
    for folder in ("run", "elsewhere"):
        torch.save({"model": mae.state_dict(), "args": argparse.Namespace(**sizes)}, tmp_path / folder / "m.pth")
    checkpoint = str(tmp_path / "run" / "m.pth")
    state = demo.Demo(demo.load_model(checkpoint, None, arch=sizes), checkpoint, None, torch.device("cpu"))
    server = demo.make_server(state, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]

    def request(method, path, body=None, **headers):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **headers})
        resp = conn.getresponse()
        out = resp.status, json.loads(resp.read() or b"{}")
        conn.close()
        return out

    try:
        load = {"checkpoint": str(tmp_path / "run" / "m.pth")}
        status, answer = request("POST", "/api/load", load, Origin="http://evil.example")
        assert status == 403 and "only its own page" in answer["error"]
        assert request("POST", "/api/load", load, Host=f"rebound.example:{port}")[0] == 403
        assert request("GET", "/api/info", Host=f"rebound.example:{port}")[0] == 403
        status, answer = request("POST", "/api/load", {"checkpoint": str(tmp_path / "elsewhere" / "m.pth")},
                                 Origin=f"http://127.0.0.1:{port}")
        assert status == 403 and "--allow" in answer["error"]
        # a path that climbs out of the allowed folder is outside it too
        outside = str(tmp_path / "run" / ".." / "elsewhere" / "m.pth")
        assert request("POST", "/api/load", {"checkpoint": outside})[0] == 403
        assert state.checkpoint == checkpoint  # nothing was loaded
        # the page's own request reaches the loader (which wants the arch of this small model)
        status, answer = request("POST", "/api/load", load, Origin=f"http://localhost:{port}")
        assert status == 400 and "does not fit --arch" in answer["error"]
        assert request("GET", "/api/info")[0] == 200
    finally:
        server.shutdown()
        server.server_close()
