"""Where molecules come from: readers of any table or molecule file
(readers.py, streamed as Arrow batches with every row accounted for) and
the PCBA-128 download (pcba.py). Synthetic inputs are featurize/synthetic/."""
