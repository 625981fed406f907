"""cvf pipeline: crawl arXiv, extract figures, classify, filter, publish.

Each stage is a module of plain functions over the data contract described in
docs/ARCHITECTURE.md; the Prefect flows in flows/ only wire them together.
"""
