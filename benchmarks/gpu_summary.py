"""Join the phase JSONs of `bash benchmarks/gpu.sh` into the result file and its Markdown.

    python benchmarks/gpu_summary.py results/gpu            # -> results/gpu/h200-YYYYMMDD.{json,md}
    python benchmarks/gpu_summary.py results/gpu --copy-to benchmarks/results   # to commit it

Reads OUT/train.json, evaluate.json, loader.json (whichever exist: a phase cut off by its time
limit leaves what it measured), phases.tsv (exit status and seconds of each phase), gpu.txt and
command.txt. Writes `<device>-<YYYYMMDD>.json` with the fields below (null where not measured)
and the short `.md` beside it. Pure standard library: runs anywhere.

Fields: device, torch, date, command, phases; released_train_img_s, train_fp32_img_s,
train_onthefly_img_s, train_cached_img_s (+ *_peak_memory_gib, *_ratio vs released),
train_first_loss_abs_diff, train_heldout_loss_gap (cvf fast - cvf fp32), train_end_to_end_img_s,
loader_only_img_s, input_keeps_up; released_eval_episodes_s, eval_episodes_s (the fastest cvf evaluation whose
IoU agreement with the released loop is >= 0.99, else the default fp32 one; `eval_path` says which), eval_iou_agreement,
eval_ratio, *_peak_memory_gib; targets (the issue's ratios, met or not); raw (the phase JSONs).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

TARGETS = {"train_onthefly_ratio": 2.8, "train_cached_ratio": 5.5, "eval_ratio": 10.0}


def load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def phases(out: Path) -> dict:
    rows = {}
    if (out / "phases.tsv").is_file():
        for line in (out / "phases.tsv").read_text().splitlines():
            name, rc, seconds, limit = line.split("\t")
            rows[name] = {"exit": rc if rc == "skipped" else int(rc), "seconds": int(seconds),
                          "limit_s": int(limit), "timed_out": rc in ("124", "137")}
    return rows


def slug(device: str) -> str:
    m = re.search(r"\b([A-Z]\d{2,4}[A-Z]?)\b", device or "")
    return m.group(1).lower() if m else (re.sub(r"[^a-z0-9]+", "-", (device or "cpu").lower()).strip("-") or "cpu")


def row(d: dict, *keys):
    for k in keys:
        d = d.get(k, {}) if isinstance(d, dict) else {}
    return d if d != {} else None


def summarise(out: Path) -> dict:
    train, evaluate, loader = (load(out / f"{n}.json") for n in ("train", "evaluate", "loader"))
    device = train.get("device") or evaluate.get("device") or loader.get("device") or "unknown"
    r = {"device": device, "torch": train.get("torch") or evaluate.get("torch") or loader.get("torch"),
         "date": time.strftime("%Y-%m-%d"),
         "command": (out / "command.txt").read_text().strip() if (out / "command.txt").is_file() else None,
         "gpu": (out / "gpu.txt").read_text().strip() if (out / "gpu.txt").is_file() else None,
         "phases": phases(out)}
    rows = train.get("rows", {})
    for key, name in (("released_train", "released"), ("train_fp32", "cvf_fp32"),
                      ("train_onthefly", "cvf_fast_onthefly"), ("train_cached", "cvf_fast_cached")):
        r[f"{key}_img_s"] = row(rows, name, "img_s")
        r[f"{key}_img_s_range"] = [row(rows, name, "img_s_min"), row(rows, name, "img_s_max")]
        r[f"{key}_peak_memory_gib"] = row(rows, name, "peak_memory_gib")
    base = r["released_train_img_s"]
    for key in ("train_fp32", "train_onthefly", "train_cached"):
        r[f"{key}_ratio"] = round(r[f"{key}_img_s"] / base, 3) if base and r[f"{key}_img_s"] else None
    r["train_first_loss_abs_diff"] = row(train, "agreement", "first_loss_abs_diff")
    r["train_heldout_loss_gap"] = row(train, "held_out_loss_gap", "cvf_fast_onthefly")
    r["train_cached_heldout_loss_gap"] = row(train, "held_out_loss_gap", "cvf_fast_cached")
    r["train_bf16_tokenizer_agreement"] = train.get("bf16_tokenizer_agreement")
    r["train_end_to_end_img_s"] = row(loader, "end_to_end", "img_s")
    r["loader_only_img_s"] = row(loader, "loader_only", "img_s")
    # does decoding alone outrun the fastest on-the-fly step? (else input limits training)
    r["input_keeps_up"] = (r["loader_only_img_s"] >= r["train_onthefly_img_s"]
                           if r["loader_only_img_s"] and r["train_onthefly_img_s"] else None)

    r["released_eval_episodes_s"] = row(evaluate, "released", "episodes_per_s")
    r["released_eval_peak_memory_gib"] = row(evaluate, "released", "peak_memory_gib")
    candidates = [(name, evaluate[name]) for name in ("cvf_fp32", "cvf_bf16", "cvf_compiled_fp32")
                  if "episodes_per_s" in evaluate.get(name, {})]
    accurate = [c for c in candidates if (c[1].get("iou_agreement") or 0) >= 0.99]
    # none accurate enough: the default path (fp32 batched) stands, and the target is not met
    fallback = [c for c in candidates if c[0] == "cvf_fp32"]
    best = max(accurate or fallback, key=lambda c: c[1]["episodes_per_s"], default=None)
    r["eval_path"] = best[0] if best else None
    r["eval_episodes_s"] = best[1]["episodes_per_s"] if best else None
    r["eval_iou_agreement"] = best[1].get("iou_agreement") if best else None
    r["eval_peak_memory_gib"] = best[1].get("peak_memory_gib") if best else None
    r["eval_rows"] = {name: {k: evaluate[name].get(k) for k in (
        "episodes_per_s", "iou_agreement", "iou_agreement_within_0.001", "mean_abs_iou_diff", "peak_memory_gib")}
        for name in ("cvf_fp32", "cvf_bf16", "cvf_compiled_fp32", "cvf_fp32_batch1")
        if "episodes_per_s" in evaluate.get(name, {})}
    base = r["released_eval_episodes_s"]
    r["eval_ratio"] = round(r["eval_episodes_s"] / base, 2) if base and r["eval_episodes_s"] else None
    met = {k: (r[k] >= v if r[k] is not None else None) for k, v in TARGETS.items()}
    if met["eval_ratio"] is not None:
        met["eval_ratio"] = met["eval_ratio"] and (r["eval_iou_agreement"] or 0) >= 0.99
    r["targets"] = {k: {"target": v, "measured": r[k], "met": met[k]} for k, v in TARGETS.items()}
    r["raw"] = {"train": train, "evaluate": evaluate, "loader": loader}
    return r


def fmt(v, unit="") -> str:
    if v is None:
        return "not measured"
    if isinstance(v, float):
        return f"{v:,.1f}{unit}" if abs(v) >= 10 else f"{v:.4g}{unit}"
    return f"{v}{unit}"


def markdown(r: dict) -> str:
    lines = [f"# GPU run {r['date']}: {r['device']} (torch {r['torch']})", "",
             f"Command: `{r['command']}`. Phases: " + ", ".join(
                 f"{n} {p['seconds']} s{' (timed out)' if p['timed_out'] else ''}"
                 + (f" exit {p['exit']}" if p['exit'] not in (0, 124, 137) else "")
                 for n, p in r["phases"].items()), "",
             "| measurement | released | cvf | ratio | peak GiB |", "|---|---|---|---|---|",
             f"| training, fp32 eager (img/s) | {fmt(r['released_train_img_s'])} | {fmt(r['train_fp32_img_s'])} "
             f"| {fmt(r['train_fp32_ratio'], 'x')} | {fmt(r['train_fp32_peak_memory_gib'])} |",
             f"| training, fast on the fly (img/s) | {fmt(r['released_train_img_s'])} | "
             f"{fmt(r['train_onthefly_img_s'])} | {fmt(r['train_onthefly_ratio'], 'x')} | "
             f"{fmt(r['train_onthefly_peak_memory_gib'])} |",
             f"| training, cached tokens (img/s) | {fmt(r['released_train_img_s'])} | {fmt(r['train_cached_img_s'])} "
             f"| {fmt(r['train_cached_ratio'], 'x')} | {fmt(r['train_cached_peak_memory_gib'])} |",
             f"| training end to end from shards (img/s) | | {fmt(r['train_end_to_end_img_s'])} | | |",
             f"| evaluation, whole path (episodes/s; {r['eval_path']}) | {fmt(r['released_eval_episodes_s'])} "
             f"| {fmt(r['eval_episodes_s'])} | {fmt(r['eval_ratio'], 'x')} | {fmt(r['eval_peak_memory_gib'])} |",
             "", f"The released training step peaks at {fmt(r['released_train_peak_memory_gib'])} GiB, "
                 f"the released evaluation loop at {fmt(r['released_eval_peak_memory_gib'])} GiB.",
             f"Agreement: first-step loss |cvf fp32 - released fp32| {fmt(r['train_first_loss_abs_diff'])}; "
             f"held-out loss gap (cvf fast - cvf fp32) {fmt(r['train_heldout_loss_gap'])}, cached "
             f"{fmt(r['train_cached_heldout_loss_gap'])}; bf16 tokenizer agreement "
             f"{fmt(r['train_bf16_tokenizer_agreement'])}; evaluation IoU equal to the released loop's on "
             f"{fmt(r['eval_iou_agreement'])} of episodes (rows: " + ", ".join(
                 f"{k} {fmt(v['episodes_per_s'])}/s, equal {fmt(v['iou_agreement'])}, within 0.001 "
                 f"{fmt(v['iou_agreement_within_0.001'])}" for k, v in r["eval_rows"].items())
             + f"). Input pipeline alone: {fmt(r['loader_only_img_s'])} img/s"
             + (f" ({'keeps up with' if r['input_keeps_up'] else 'slower than'} the fast step)"
                if r["input_keeps_up"] is not None else "") + ".", "",
             "Targets: " + ", ".join(f"{k} >= {t['target']}: {fmt(t['measured'])} "
                                     f"({'met' if t['met'] else 'not met' if t['met'] is not None else 'not measured'})"
                                     for k, t in r["targets"].items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="the folder gpu.sh wrote ($OUT)")
    p.add_argument("--copy-to", help="also write the two files here (benchmarks/results, to commit them; "
                   "works when OUT is a read-only fetched folder)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if not out.is_dir():
        print(f"error: no such folder: {out}", file=sys.stderr)
        return 2
    r = summarise(out)
    name = f"{slug(r['device'])}-{time.strftime('%Y%m%d')}"
    folders = [out] + ([Path(args.copy_to)] if args.copy_to else [])
    for suffix, text in ((".json", json.dumps(r, indent=2) + "\n"), (".md", markdown(r))):
        for folder in folders:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                tmp = folder / f".{name}{suffix}.tmp"
                tmp.write_text(text)
                tmp.replace(folder / f"{name}{suffix}")
            except PermissionError:   # a fetched, read-only $OUT: --copy-to still gets them
                if folder == out and args.copy_to:
                    continue
                raise
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
