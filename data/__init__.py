"""The data: sources (hub, parquet, folders, the synthetic set), splits and label noise, transforms, and the uint8 path
that feeds a GPU."""
