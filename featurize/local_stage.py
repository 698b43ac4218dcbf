"""Pass 1 in this process: the source's batches through
:func:`featurize.batch.featurize_batch` into one staged Parquet file."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from featurize.batch import featurize_batch
from featurize.options import FeaturizeOptions
from featurize.parquet_runs import write_tables
from featurize.sources.readers import LibrarySource


def stage_local(source: LibrarySource, staged: Path, options: FeaturizeOptions,
                 progress: bool) -> list[Path]:
    path = staged / "part-000000.parquet"
    staged.mkdir()
    with tqdm(desc="featurize", unit=" mol", disable=not progress, smoothing=0.1) as bar:
        def featurized() -> Iterator[pa.Table]:
            for batch in source.iter_batches():
                yield featurize_batch(batch, **options.batch_kwargs())
                bar.update(batch.num_rows)

        write_tables(featurized(), path)
    return [path]
