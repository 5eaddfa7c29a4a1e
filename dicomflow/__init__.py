"""dicomflow: the AWS medical-imaging reference architecture as software that runs.

Orthanc PACS -> Ground Truth DICOM labeling -> SageMaker training (MONAI) ->
SageMaker async inference writing DICOM SR/SEG back to the PACS; runnable on a
laptop (real Orthanc, AWS emulated by moto with the compute really executed) and
deployable unchanged to AWS.
"""

__version__ = "0.1.0"
