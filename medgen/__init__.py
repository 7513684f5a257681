"""medgen: medical-imaging modality translation.

Preprocess CT and MR volumes, train unpaired MR->CT translators, apply CT segmenters to MR
scans through synthetic CT, and generate labelled synthetic training volumes. Every pipeline is
tracked in MLflow.
"""

__version__ = "0.1.0"
