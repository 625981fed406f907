"""cvf pipeline: crawl arXiv, extract figures, classify, filter, publish.

Each stage is a module of plain functions over the data contract (docs/contract.md,
generated from pipeline/contract.py); the Prefect flows in flows/ only wire them together.
"""
