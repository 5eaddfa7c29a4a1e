"""Add-ins loaded into the moto server process: Lambdas that really run (host processes with the function's
code and environment) and SageMaker endpoints that really serve (local serving processes)."""
