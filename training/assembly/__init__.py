"""Data assembly: AnnData/MuData files or objects -> the aligned, preprocessed training tables."""
