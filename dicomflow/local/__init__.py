"""The local cloud (Orthanc PACS + emulated AWS) and its helpers for local mode.

Only the CLI and the tests import this package; lambdas, containers and the core library never
do: the endpoint URL is the only switch between emulated and real AWS.
"""
