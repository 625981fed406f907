"""A web page that shows what a visual-prompting model does, served on 127.0.0.1.

    python -m model.demo --checkpoint checkpoint-1000.pth --vqgan-config vqgan/model.yaml
    python -m model.demo --checkpoint ckpt.pth --vqgan-config model.yaml --examples my_pictures/
    python -m model.demo --checkpoint mae_pixels.pth          # a pixel MAE (the paper's baseline)
    python -m model.demo --checkpoint beit.pth --dall-e dall_e/    # unilm's BEiT, DALL-E codes
    python -m model.demo --checkpoint last.ckpt --vqgan-config model.yaml --class-label 1  # taming's

Open the printed address in a browser: pick a built-in example (the paper's synthetic tasks, or
the pictures of --examples) or upload an example pair (input and output) and one or more query
images, choose the layout and mask style, press Run. The page shows, for every query, the
prompt canvas (hidden patches grey), the predicted answer cell and the canvas with the
prediction pasted in, each downloadable as a PNG, and says on which device and how long it ran.

The page is plain HTML and JavaScript served by this process (Python's http.server): nothing is
loaded from the internet, so it works offline. It listens on the loopback interface only.

--examples DIR: every image in DIR with a partner named `<stem>_out.*` (or `_mask`, `_target`)
is an example pair (input, output); every other image is a query.

Inference is `model.prompting.inpaint` in fp32 on float64 canvases, as the released
segmentation evaluation computes it (several example pairs: `inpaint_ensemble`), under the
evaluation's arithmetic (`model.evaluate.ExactArithmetic`: no TF32, attention as released).

The server answers only its own page: a request whose Host is not 127.0.0.1/localhost at its
port, or a POST from another origin, gets 403 (a web page elsewhere cannot drive it, even
through DNS rebinding). "Load model" reads only from the folders of the checkpoint and config
given at start, or those given with --allow.
Bad input (not an image, an image over the size limits, a checkpoint that does not load) is a
message on the page; a bad --checkpoint is an `error:` line at start.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model import cli, tasks
from model.inpainters import describe
from model.prompting import (cell_size, inpaint, inpaint_ensemble, make_canvas, make_rows_canvas,
                             normalize, patch_mask_to_pixels, quadrant_mask, rows_answer_box,
                             rows_figure_size, rows_mask, to_uint8)

HOST = "127.0.0.1"
DEFAULT_PORT = 8765
MAX_IMAGE_BYTES = 20 * 2**20          # one uploaded file
MAX_IMAGE_PIXELS = 50_000_000         # width x height, read from the header before decoding
MAX_BODY_BYTES = 200 * 2**20          # one request (base64 adds a third)
MAX_QUERIES = 16
MAX_PAIRS = 4

# layout -> what it is (shown on the page); horizontal/vertical are the evaluation's study names
LAYOUTS = {
    "horizontal": "the released 2x2 canvas: example pair in the top row, query bottom-left, answer "
                  "bottom-right (several example pairs: one canvas each, token probabilities averaged)",
    "vertical": "the release's other 2x2 order: example pair in the left column, query top-right",
    "rows-black": "one row per example pair, the query last, on black "
                  "(the released synthetic-task canvas)",
    "rows-white": "one row per example pair, the query last, on white (n-shot prompt)",
}
TWO_BY_TWO = {"horizontal": False, "vertical": True}     # layout -> make_canvas's flip
# "as-given", then the evaluation's styles (model.tasks.styled_target): the example outputs are
# read as masks (brighter than mid-grey = foreground) and drawn in the style
MASK_STYLES = {
    "as-given": "example outputs as uploaded",
    "bw": "example outputs as masks, white on black (the released segmentation targets)",
    "purple": "example outputs as masks, yellow on purple (the release's other mask colours)",
    "texture": "example outputs as masks, a white/blue checkerboard foreground",
    "edges": "example outputs as masks, only their boundary",
}
assert set(MASK_STYLES) == {"as-given", *tasks.MASK_STYLES}
SYNTHETIC_SHOTS = 2                   # the released synthetic prompts hold two example rows


class DemoError(ValueError):
    """A message for the person using the page (bad input, a checkpoint that does not load)."""


class Forbidden(DemoError):
    """A request this server does not serve: from another site, or for a file outside --allow."""


# ----------------------------------------------------------------------------- model

def load_model(checkpoint, vqgan_config=None, arch=None, size=None, vqgan_ckpt=None, device="cpu",
               dall_e=None, class_label=None):
    """The one place the demo loads a model, in eval mode on `device`: `model.evaluate`'s loader,
    any of the four inpainting models, the kind told from the checkpoint (MAE-VQGAN with its
    taming `model.yaml`, pixel MAE, BEiT, the VQGAN transformer). Any failure (missing
    file, foreign pickle, wrong arch) is a DemoError saying why; unpickling is `weights_only`."""
    from model.evaluate import load_model as load_for_evaluation

    if not checkpoint or not Path(checkpoint).is_file():
        raise DemoError(f"checkpoint not found: {checkpoint}")
    # No config: the loader says whether this checkpoint needs one (a pixel MAE would not).
    if vqgan_config and not Path(vqgan_config).is_file():
        raise DemoError(f"VQGAN config not found: {vqgan_config}")
    if vqgan_config:  # read it even where the checkpoint needs none: a wrong file is a wrong start
        from model.vqgan import vqgan_params
        try:
            vqgan_params(vqgan_config)
        except (ValueError, OSError) as e:
            raise DemoError(f"--vqgan-config {vqgan_config}: {e}") from None
    try:
        return load_for_evaluation(checkpoint, vqgan_config, arch, size, vqgan_ckpt, device,
                                   dall_e=dall_e, class_label=class_label)
    except DemoError:
        raise
    except Exception as e:  # noqa: BLE001 - a stranger's file fails in many ways; say which
        # model.checkpoint already words refusals and non-checkpoints as one line with the path
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if not isinstance(e, (ValueError, FileNotFoundError)):
            msg = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
        msg = msg if str(checkpoint) in msg else f"{checkpoint} does not load: {msg}"
        raise DemoError(msg) from None


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU ({torch.cuda.get_device_name(device)})"
    return f"CPU ({torch.get_num_threads()} threads)"


# ----------------------------------------------------------------------------- images

def read_image(data: bytes, what: str) -> Image.Image:
    """Bytes of an uploaded file -> RGB image, bounded: the byte and pixel limits are checked
    before the pixels are decoded."""
    if not data:
        raise DemoError(f"{what} is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise DemoError(f"{what} is {len(data) / 2**20:.1f} MB; the limit is "
                        f"{MAX_IMAGE_BYTES // 2**20} MB")
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise DemoError(f"{what} is {w} x {h} pixels, over the "
                                f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixel limit")
            return img.convert("RGB")
    except DemoError:
        raise
    except Image.DecompressionBombError:      # PIL's own, far larger, limit
        raise DemoError(f"{what} is over the {MAX_IMAGE_PIXELS / 1e6:.0f} megapixel limit") from None
    except Image.UnidentifiedImageError:
        raise DemoError(f"{what} is not an image (no image format this page can read)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DemoError(f"{what} is not an image this page can read ({e})") from None


def decode_data_url(text, what: str) -> bytes:
    """`data:<type>;base64,<payload>` (or bare base64) -> bytes."""
    if not isinstance(text, str):
        raise DemoError(f"{what} is missing")
    payload = text.split(",", 1)[1] if text.startswith("data:") else text
    if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise DemoError(f"{what} is over the {MAX_IMAGE_BYTES // 2**20} MB limit")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise DemoError(f"{what} is not base64-encoded data") from None


def png_bytes(pixels: np.ndarray | torch.Tensor) -> bytes:
    """uint8 [H,W,3] -> PNG."""
    arr = pixels.numpy() if isinstance(pixels, torch.Tensor) else pixels
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- prompts

@dataclass
class Prompt:
    """Canvases for every query: [B,K,3,S,S] in [0,1] (K prompts averaged per query), the
    hidden patches [L] and the answer box (top, left, bottom, right) in canvas pixels."""
    canvases: torch.Tensor
    mask: torch.Tensor
    answer_box: tuple[int, int, int, int]


def cell_tensor(img: Image.Image, side: int) -> torch.Tensor:
    """PIL bicubic resize to the cell, as the evaluation's loaders: canvas values stay k/255."""
    return tasks.to_tensor(img.resize((side, side), Image.BICUBIC))


def output_cell(img: Image.Image, style: str, side: int) -> torch.Tensor:
    """An example output in the chosen mask style, at the cell side."""
    if style == "as-given":
        return cell_tensor(img, side)
    return tasks.styled_target(np.asarray(img.convert("L")) >= 128, style, side)


def build_prompt(pairs: list[tuple[Image.Image, Image.Image]], queries: list[Image.Image],
                 layout: str = "horizontal", size: int = 224, patch: int = 16,
                 mask_style: str = "as-given") -> Prompt:
    if layout not in LAYOUTS:
        raise DemoError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if mask_style not in MASK_STYLES:
        raise DemoError(f"unknown mask style {mask_style!r}; choose from {', '.join(MASK_STYLES)}")
    if not pairs:
        raise DemoError("give at least one example pair (input and output)")
    if not queries:
        raise DemoError("give at least one query image")
    if layout in TWO_BY_TWO:
        side = cell_size(size)
        examples = [(cell_tensor(a, side), output_cell(b, mask_style, side)) for a, b in pairs]
        canvases = torch.stack([
            torch.stack([make_canvas(a, b, cell_tensor(q, side), size=size, flip=TWO_BY_TWO[layout])
                         for a, b in examples]) for q in queries])
        c = size - side
        return Prompt(canvases, quadrant_mask(size, patch), (c, c, size, size))
    rows = len(pairs) + 1
    side = rows_figure_size(size, rows)
    examples = [(cell_tensor(a, side), output_cell(b, mask_style, side)) for a, b in pairs]
    background = 0.0 if layout == "rows-black" else 1.0
    canvases = torch.stack([make_rows_canvas(examples + [(cell_tensor(q, side), None)], size=size,
                                             background=background)[None] for q in queries])
    return Prompt(canvases, rows_mask(size, patch, rows), rows_answer_box(size, rows))


@torch.no_grad()
def run_prompt(model, prompt: Prompt, device) -> list[dict]:
    """Inpaint every query's prompt; -> per query {prompt, answer, pasted}: uint8 [H,W,3]."""
    canvases = normalize(prompt.canvases.to(device), torch.float64)   # as the release: float64
    mask = prompt.mask.to(device)
    if canvases.shape[1] == 1:      # argmax of the logits themselves, exactly as the evaluation
        pasted = inpaint(model, canvases[:, 0], mask).cpu()
    else:
        pasted = inpaint_ensemble(model, canvases, mask).cpu()
    size, patch = canvases.shape[-1], int(model.patch_embed.patch_size)
    hidden = patch_mask_to_pixels(prompt.mask, size, patch)
    top, left, bottom, right = prompt.answer_box
    out = []
    for shown, answer in zip(to_uint8(canvases[:, 0]).cpu(), pasted):
        grey = torch.where(hidden[..., None], torch.tensor(128, dtype=torch.uint8), shown)
        out.append({"prompt": grey, "answer": answer[top:bottom, left:right], "pasted": answer})
    return out


# ----------------------------------------------------------------------------- examples

def synthetic_examples(task: str, seed: int = 0, queries: int = 3) -> dict:
    """One of the paper's synthetic tasks as an example set: two pairs and `queries` queries,
    drawn with the released sampler (224 px figures on white, as `Figure.draw`)."""
    episodes = tasks.synthetic_episodes(task, queries, seed, shots=SYNTHETIC_SHOTS)
    pairs = [(a.draw(), b.draw()) for a, b in episodes[0].supports]
    return {"name": f"synthetic: {task}", "layout": "rows-black",
            "pairs": [tuple(png_bytes(x) for x in pair) for pair in pairs],
            "queries": [png_bytes(ep.query[0].draw()) for ep in episodes]}


OUTPUT_SUFFIXES = ("_out", "_output", "_mask", "_target")


def folder_examples(folder: Path, limit: int = 64) -> dict:
    """--examples DIR: `<stem>.*` with a `<stem>_out.*` partner is a pair, the rest are queries."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DemoError(f"--examples {folder}: not a folder")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in tasks.IMAGE_EXTENSIONS)[:limit]
    by_stem = {p.stem: p for p in files}
    outputs = {p.stem for p in files if p.stem.endswith(OUTPUT_SUFFIXES)}
    pairs, queries = [], []
    for p in files:
        if p.stem in outputs:
            continue
        partner = next((by_stem[p.stem + s] for s in OUTPUT_SUFFIXES if p.stem + s in by_stem), None)
        if partner is not None:
            pairs.append((p, partner))
        else:
            queries.append(p)
    if not pairs or not queries:
        raise DemoError(f"--examples {folder}: needs at least one pair (<name>.png with "
                        f"<name>_out.png) and one other image as a query; found {len(pairs)} "
                        f"pair(s), {len(queries)} other image(s)")

    def checked(p: Path) -> bytes:
        data = p.read_bytes()
        read_image(data, str(p))          # a bad file is said at start, not on first use
        return data

    return {"name": f"folder: {folder.name}", "layout": "horizontal",
            "pairs": [(checked(a), checked(b)) for a, b in pairs[:MAX_PAIRS]],
            "queries": [checked(q) for q in queries[:MAX_QUERIES]]}


# ----------------------------------------------------------------------------- the service

@dataclass
class Demo:
    """What the server holds: the model (swapped by /api/load), its device, the examples."""
    model: object
    checkpoint: str
    vqgan_config: str | None
    device: torch.device
    examples: list[dict] = field(default_factory=list)
    # the folders /api/load may read from (default: those of the checkpoint and config given)
    allowed: list[Path] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        if not self.allowed:
            self.allowed = [Path(p).parent for p in (self.checkpoint, self.vqgan_config) if p]
        self.allowed = [Path(p).resolve() for p in self.allowed]

    def check_allowed(self, path, what: str) -> None:
        """Forbidden unless `path` (links followed) lies in one of the allowed folders."""
        real = Path(path).resolve()
        if not any(real.is_relative_to(folder) for folder in self.allowed):
            raise Forbidden(f"{path}: the demo loads {what}s only from "
                            f"{', '.join(map(str, self.allowed))} (start it with --allow DIR for others)")

    def info(self) -> dict:
        m = self.model
        return {"device": device_label(self.device), "checkpoint": self.checkpoint,
                "model": describe(m),
                "vqgan_config": self.vqgan_config or "",
                "size": int(m.patch_embed.img_size), "patch": int(m.patch_embed.patch_size),
                "layouts": LAYOUTS, "mask_styles": MASK_STYLES,
                "limits": {"image_bytes": MAX_IMAGE_BYTES, "image_pixels": MAX_IMAGE_PIXELS,
                           "queries": MAX_QUERIES, "pairs": MAX_PAIRS},
                "examples": [{"id": i, "name": e["name"], "layout": e["layout"],
                              "pairs": [[f"/examples/{i}/pair{j}-{k}.png" for k in ("in", "out")]
                                        for j in range(len(e["pairs"]))],
                              "queries": [f"/examples/{i}/query{j}.png"
                                          for j in range(len(e["queries"]))]}
                             for i, e in enumerate(self.examples)]}

    def example_file(self, path: str) -> bytes | None:
        """/examples/<set>/pair<j>-in.png, pair<j>-out.png or query<j>.png -> its bytes."""
        parts = path.split("/")
        if len(parts) != 4 or not parts[2].isdigit() or not parts[3].endswith(".png"):
            return None
        i, name = int(parts[2]), parts[3][:-4]
        if i >= len(self.examples):
            return None
        ex = self.examples[i]
        try:
            if name.startswith("query"):
                return ex["queries"][int(name[5:])]
            if name.startswith("pair") and "-" in name:
                j, side = name[4:].split("-")
                return ex["pairs"][int(j)][("in", "out").index(side)]
        except (ValueError, IndexError):
            return None
        return None

    def run(self, body: dict) -> dict:
        """/api/run: {pairs: [[input, output]], queries: [...], layout, mask_style} with images
        as data URLs -> per query PNGs (data URLs) and the time taken."""
        pairs, queries = body.get("pairs") or [], body.get("queries") or []
        if not isinstance(pairs, list) or not isinstance(queries, list):
            raise DemoError("pairs and queries must be lists")
        if len(pairs) > MAX_PAIRS or len(queries) > MAX_QUERIES:
            raise DemoError(f"at most {MAX_PAIRS} example pairs and {MAX_QUERIES} queries")
        images = []
        for j, pair in enumerate(pairs):
            if not isinstance(pair, list) or len(pair) != 2:
                raise DemoError(f"example pair {j + 1} needs an input and an output")
            images.append(tuple(read_image(decode_data_url(x, f"example {j + 1} {side}"),
                                           f"example {j + 1} {side}")
                                for x, side in zip(pair, ("input", "output"))))
        query_images = [read_image(decode_data_url(q, f"query {j + 1}"), f"query {j + 1}")
                        for j, q in enumerate(queries)]
        with self.lock:
            model = self.model
            size, patch = int(model.patch_embed.img_size), int(model.patch_embed.patch_size)
            prompt = build_prompt(images, query_images, str(body.get("layout", "horizontal")), size,
                                  patch, str(body.get("mask_style", "as-given")))
            started = time.perf_counter()
            from model.evaluate import ExactArithmetic

            with ExactArithmetic():   # the evaluation's fp32: no TF32, attention as released
                results = run_prompt(model, prompt, self.device)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - started
        return {"device": device_label(self.device), "seconds": seconds, "size": size,
                "results": [{k: "data:image/png;base64," + base64.b64encode(png_bytes(v)).decode()
                             for k, v in r.items()} for r in results]}

    def load(self, body: dict) -> dict:
        """/api/load: {checkpoint, vqgan_config} -> swap the model; the old one stays on failure."""
        checkpoint, vqgan_config = body.get("checkpoint"), body.get("vqgan_config") or None
        if not isinstance(checkpoint, str) or not checkpoint or not isinstance(vqgan_config, (str, type(None))):
            raise DemoError("/api/load wants {checkpoint: path, vqgan_config: path or empty}")
        self.check_allowed(checkpoint, "checkpoint")
        if vqgan_config:
            self.check_allowed(vqgan_config, "VQGAN config")
        model = load_model(checkpoint, vqgan_config, device=self.device)
        with self.lock:
            self.model, self.checkpoint, self.vqgan_config = model, str(checkpoint), vqgan_config
        return self.info()


class Handler(BaseHTTPRequestHandler):
    server_version = "cvf-demo"
    demo: Demo                              # set on the subclass made by make_server

    def log_message(self, format, *args):   # one quiet line per request on stderr
        if self.demo_verbose:
            super().log_message(format, *args)

    demo_verbose = False

    def send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        # the page loads nothing from elsewhere; say so to the browser too
        self.send_header("Content-Security-Policy",
                         "default-src 'self'; img-src 'self' data: blob:; "
                         "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'")
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, obj: dict) -> None:
        self.send(status, json.dumps(obj).encode(), "application/json")

    def same_site(self, post: bool) -> bool:
        """Whether the request comes from this page: its Host names this server (a DNS
        rebinding attack's names another), and a POST's Origin, when sent, is this server.
        Answers 403 when not."""
        port = self.server.server_address[1]
        mine = {f"127.0.0.1:{port}", f"localhost:{port}"}
        origin = self.headers.get("Origin")
        if self.headers.get("Host") in mine and (not post or origin is None
                                                 or origin in {f"http://{m}" for m in mine}):
            return True
        self.send_json(403, {"error": "this demo answers only its own page at "
                                      f"http://127.0.0.1:{port}/"})
        return False

    def do_GET(self):
        if not self.same_site(post=False):
            return
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            return self.send(200, PAGE.encode(), "text/html; charset=utf-8")
        if path == "/api/info":
            return self.send_json(200, self.demo.info())
        if path.startswith("/examples/"):
            data = self.demo.example_file(path)
            if data is not None:
                return self.send(200, data, "image/png")
        self.send_json(404, {"error": f"nothing at {path}"})

    def do_POST(self):
        if not self.same_site(post=True):
            return
        path = self.path.split("?", 1)[0]
        action = {"/api/run": self.demo.run, "/api/load": self.demo.load}.get(path)
        if action is None:
            return self.send_json(404, {"error": f"nothing at {path}"})
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY_BYTES:
            self.close_connection = True
            return self.send_json(413, {"error": f"the request is {length} bytes; the limit is "
                                                 f"{MAX_BODY_BYTES // 2**20} MB"})
        try:
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict):
                raise DemoError("the request must be a JSON object")
            return self.send_json(200, action(body))
        except json.JSONDecodeError:
            return self.send_json(400, {"error": "the request is not JSON"})
        except Forbidden as e:
            return self.send_json(403, {"error": str(e)})
        except DemoError as e:
            return self.send_json(400, {"error": str(e)})
        except torch.cuda.OutOfMemoryError:
            return self.send_json(507, {"error": "the GPU ran out of memory: try fewer queries"})
        except Exception as e:  # noqa: BLE001 - the page gets one line; the terminal gets the type
            print(f"demo: {path} failed: {type(e).__name__}: {e}", file=sys.stderr)
            return self.send_json(500, {"error": f"internal error: {type(e).__name__}: {e}"})


def make_server(demo: Demo, port: int = DEFAULT_PORT, verbose: bool = False) -> ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1:`port` (0: a free one) serving `demo`; call serve_forever."""
    handler = type("DemoHandler", (Handler,), {"demo": demo, "demo_verbose": verbose})
    server = ThreadingHTTPServer((HOST, port), handler)
    server.daemon_threads = True
    return server


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=cli.readable_file,
                   help="MAE-VQGAN or pixel-MAE checkpoint ({'model': state_dict})")
    p.add_argument("--vqgan-config", type=cli.readable_file, help="taming VQGAN model.yaml the MAE-VQGAN was trained with "
                                          "(a pixel MAE needs none)")
    p.add_argument("--vqgan-ckpt", type=cli.readable_file,
                   help="taming last.ckpt, if the checkpoint has no vae.* weights")
    p.add_argument("--arch", help="released arch name, or a JSON file/string of MaeVqgan sizes "
                                  "(default: what the checkpoint records)")
    p.add_argument("--size", type=cli.positive_int, help="canvas size (default: the checkpoint's)")
    p.add_argument("--dall-e", metavar="DIR", type=cli.existing_dir,
                   help="BEiT of unilm's checkpoints: folder holding OpenAI's DALL-E decoder.pkl")
    p.add_argument("--class-label", type=cli.non_negative_int, metavar="N",
                   help="class-conditional VQGAN transformer: the ImageNet class to condition on")
    p.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    p.add_argument("--examples", type=cli.existing_dir, help="a folder of your own pictures to offer as examples "
                                      "(<name>.png + <name>_out.png pairs, other images are queries)")
    p.add_argument("--allow", action="append", metavar="DIR", default=[], type=cli.existing_dir,
                   help="a folder the page's 'load model' may read checkpoints and configs from "
                        "(repeatable; default: the folders of --checkpoint and --vqgan-config)")
    p.add_argument("--port", type=cli.port_or_zero, default=DEFAULT_PORT,
                   help=f"port on 127.0.0.1 (default {DEFAULT_PORT}; 0: any free port)")
    p.add_argument("--verbose", action="store_true", help="log every request")
    return p


def main(argv=None) -> int:
    from model.evaluate import read_arch

    args = parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        arch = read_arch(args.arch)
        model = load_model(args.checkpoint, args.vqgan_config, arch, args.size, args.vqgan_ckpt,
                           device, dall_e=args.dall_e, class_label=args.class_label)
        examples = [synthetic_examples(t) for t in sorted(tasks.SYNTHETIC_TASKS)]
        if args.examples:
            examples.insert(0, folder_examples(Path(args.examples)))
    except (DemoError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        allowed = args.allow or [Path(p).parent for p in (args.checkpoint, args.vqgan_config) if p]
        server = make_server(Demo(model, str(args.checkpoint), args.vqgan_config, device, examples,
                                  allowed), args.port, args.verbose)
    except OSError as e:
        print(f"error: cannot listen on {HOST}:{args.port} ({e.strerror or e}); "
              "--port 0 takes any free port", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(f"cvf demo on {device_label(device)}: open http://{host}:{port}/  (Ctrl-C stops it)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


PAGE = Path(__file__).with_name("demo.html").read_text(encoding="utf-8")   # package data


if __name__ == "__main__":
    sys.exit(main())
