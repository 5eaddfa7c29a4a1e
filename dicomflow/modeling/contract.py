"""The model contract's torch-free names, so the CLI and the Lambdas can use them without importing torch:
the tasks a model can have (the network each trains is in :mod:`dicomflow.modeling.networks`) and the
metadata file inside ``model.tar.gz`` (written and read by :mod:`dicomflow.modeling.artifact`)."""

TASKS = ("classification2d", "classification3d", "segmentation3d")
METADATA_FILE = "dicomflow_model.json"
