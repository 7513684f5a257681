"""Model packaging: medgen bundles (MONAI layout), loading, external CT segmenter adapters."""
