"""Reading what jobs wrote: ``parts`` is the one reader of an output's Parquet parts."""
