"""`cvf`: one entry point for every job. `cvf JOB ARGS...` is exactly `python -m MODULE ARGS...`
(same arguments, output and exit status); `cvf` or `cvf --help` lists the jobs.

The jobs are named here and run by module name, imported only when run, so listing them is
instant and `model/` stays free of `pipeline/` imports.
"""
from __future__ import annotations

import importlib.util
import runpy
import sys

# (job, module, what it does), grouped by stage as the docs are.
STAGES = {
    "acquire (docs/acquire.md)": [
        ("crawl", "pipeline.crawl",
         "cs.CV papers and their e-prints from the arXiv API, politely, resumable"),
        ("bulk", "pipeline.bulk", "the same e-prints from arXiv's requester-pays S3 tars"),
        ("licenses", "pipeline.licenses",
         "every paper's licence from arXiv's OAI-PMH feed, in bulk"),
        ("replay", "pipeline.replay", "a local imitation of arXiv to crawl offline (tests, demo)"),
        ("rebuild", "pipeline.rebuild",
         "the official CVF images (or a manifest's) from the published index"),
    ],
    "extract (docs/extract.md)": [
        ("extract", "pipeline.extract",
         "figures from crawled e-prints: records and RGB PNGs, resumable"),
        ("extract-flow", "flows.extract", "the same as a Prefect flow over every shard, on Dask"),
        ("render", "pipeline.render",
         "one figure file to the training PNG, as extraction renders it"),
        ("pdffigures", "pipeline.pdffigures",
         "captioned figures of a paper PDF (the fallback without LaTeX)"),
        ("pdffigures-eval", "pipeline.pdffigures_eval",
         "score the PDF figure finder on the test papers"),
    ],
    "label (docs/labeling.md)": [
        ("label-serve", "labeling.serve", "a local, offline Label Studio"),
        ("label-push", "labeling.push", "the next round of figures to label"),
        ("label-pull", "labeling.pull", "the annotations into labels/labels.parquet"),
        ("label-demo", "labeling.demo", "the labeling stage end to end on the replay's truth"),
    ],
    "curate and publish (docs/curate-and-publish.md)": [
        ("classify", "pipeline.classify",
         "train the figure classifier and score every figure (docs/classifier.md)"),
        ("contamination", "pipeline.contamination",
         "figures that overlap evaluation images (docs/contamination.md)"),
        ("filter", "pipeline.filter", "keep figures over a threshold, split 90/10 by paper"),
        ("publish", "pipeline.publish", "the manifests, dataset card and croissant.json"),
        ("verify", "pipeline.verify", "check a manifest, and images against it"),
    ],
    "model (docs/model.md)": [
        ("train", "model.train", "train MAE-VQGAN on a manifest or an image folder, resumable"),
        ("evaluate", "model.evaluate",
         "visual prompting: segmentation, detection, colorization, synthetic"),
        ("report", "model.report",
         "the four inpainting models and Table 1 (docs/inpainting-models.md)"),
        ("demo", "model.demo", "a local page to prompt a checkpoint with your own images"),
        ("data", "model.data", "pack images into tar shards for training"),
        ("voc", "model.voc", "derive and check the Pascal-5i fold lists from a VOC root"),
    ],
}
JOBS = {job: module for jobs in STAGES.values() for job, module, _ in jobs}


def usage() -> str:
    width = max(map(len, JOBS)) + 2
    lines = ["usage: cvf JOB [ARGS...]   (the same as python -m MODULE [ARGS...])",
             "       cvf JOB --help      (the job's own options)", ""]
    for stage, jobs in STAGES.items():
        lines.append(f"{stage}:")
        lines += [f"  {job:<{width}}{what}" for job, _, what in jobs]
        lines.append("")
    return "\n".join(lines).rstrip()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    job, args = argv[0], argv[1:]
    if job not in JOBS:
        print(f"error: no job {job!r}; `cvf --help` lists them", file=sys.stderr)
        return 2
    module = JOBS[job]
    if importlib.util.find_spec(module) is None:
        print(f"error: job {job!r} needs the module {module}, which this installation lacks",
              file=sys.stderr)
        return 2
    # As python -m: the module runs as __main__ with argv[0] its file; its sys.exit (status,
    # message) passes through untouched.
    sys.argv = [module] + args
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
