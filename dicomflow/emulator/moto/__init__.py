"""Add-ins loaded into the moto server process: Lambdas and SageMaker endpoints that really execute."""
