"""The local cloud's search page and GraphQL API (what AppSync and S3/CloudFront serve on AWS): one process,
:mod:`dicomflow.emulator.search_api.server`, started by ``dicomflow up``."""
