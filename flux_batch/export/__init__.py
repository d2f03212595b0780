"""`flux-batch-export`: a finished run directory as WebDataset tar shards or Parquet files."""
