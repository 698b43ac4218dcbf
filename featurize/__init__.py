"""SMILES -> standardized RDKit molecules -> fingerprints -> Parquet.

Source readers (PCBA-128, any CSV/Parquet/SDF/SMI library, precomputed
arrays), the fingerprint spec, bad-input quarantine, splits, and the batch
reader that training and screening share. Never imports pipelines/ or tuning/.
"""
