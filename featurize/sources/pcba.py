"""PCBA-128 from MoleculeNet: where it is, what it holds, and a checked copy.

The URL, file name and 128 task names are those DeepChem's ``load_pcba``
uses (``deepchem/molnet/load_function/pcba_datasets.py``), written here as
data: reading them out of DeepChem's source at run time tied every run to
the layout of that file. tests/test_featurize_sources.py checks them
against the installed DeepChem.
"""
from __future__ import annotations

import logging
import os
import shutil
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from featurize.errors import InputDataError
from featurize.sources.readers import LibrarySource

logger = logging.getLogger(__name__)

PCBA_FILE_NAME = "pcba.csv.gz"
PCBA_URL = "https://deepchemdata.s3-us-west-1.amazonaws.com/datasets/" + PCBA_FILE_NAME
PCBA_EXPECTED_ROWS = 439_863
PCBA_DEFAULT_CACHE = Path.home() / ".cache" / "pcba-mmoeex"
#: The 128 assays, in DeepChem's order (the label columns of the file).
PCBA_TASKS: tuple[str, ...] = (
    "PCBA-1030",
    "PCBA-1379",
    "PCBA-1452",
    "PCBA-1454",
    "PCBA-1457",
    "PCBA-1458",
    "PCBA-1460",
    "PCBA-1461",
    "PCBA-1468",
    "PCBA-1469",
    "PCBA-1471",
    "PCBA-1479",
    "PCBA-1631",
    "PCBA-1634",
    "PCBA-1688",
    "PCBA-1721",
    "PCBA-2100",
    "PCBA-2101",
    "PCBA-2147",
    "PCBA-2242",
    "PCBA-2326",
    "PCBA-2451",
    "PCBA-2517",
    "PCBA-2528",
    "PCBA-2546",
    "PCBA-2549",
    "PCBA-2551",
    "PCBA-2662",
    "PCBA-2675",
    "PCBA-2676",
    "PCBA-411",
    "PCBA-463254",
    "PCBA-485281",
    "PCBA-485290",
    "PCBA-485294",
    "PCBA-485297",
    "PCBA-485313",
    "PCBA-485314",
    "PCBA-485341",
    "PCBA-485349",
    "PCBA-485353",
    "PCBA-485360",
    "PCBA-485364",
    "PCBA-485367",
    "PCBA-492947",
    "PCBA-493208",
    "PCBA-504327",
    "PCBA-504332",
    "PCBA-504333",
    "PCBA-504339",
    "PCBA-504444",
    "PCBA-504466",
    "PCBA-504467",
    "PCBA-504706",
    "PCBA-504842",
    "PCBA-504845",
    "PCBA-504847",
    "PCBA-504891",
    "PCBA-540276",
    "PCBA-540317",
    "PCBA-588342",
    "PCBA-588453",
    "PCBA-588456",
    "PCBA-588579",
    "PCBA-588590",
    "PCBA-588591",
    "PCBA-588795",
    "PCBA-588855",
    "PCBA-602179",
    "PCBA-602233",
    "PCBA-602310",
    "PCBA-602313",
    "PCBA-602332",
    "PCBA-624170",
    "PCBA-624171",
    "PCBA-624173",
    "PCBA-624202",
    "PCBA-624246",
    "PCBA-624287",
    "PCBA-624288",
    "PCBA-624291",
    "PCBA-624296",
    "PCBA-624297",
    "PCBA-624417",
    "PCBA-651635",
    "PCBA-651644",
    "PCBA-651768",
    "PCBA-651965",
    "PCBA-652025",
    "PCBA-652104",
    "PCBA-652105",
    "PCBA-652106",
    "PCBA-686970",
    "PCBA-686978",
    "PCBA-686979",
    "PCBA-720504",
    "PCBA-720532",
    "PCBA-720542",
    "PCBA-720551",
    "PCBA-720553",
    "PCBA-720579",
    "PCBA-720580",
    "PCBA-720707",
    "PCBA-720708",
    "PCBA-720709",
    "PCBA-720711",
    "PCBA-743255",
    "PCBA-743266",
    "PCBA-875",
    "PCBA-881",
    "PCBA-883",
    "PCBA-884",
    "PCBA-885",
    "PCBA-887",
    "PCBA-891",
    "PCBA-899",
    "PCBA-902",
    "PCBA-903",
    "PCBA-904",
    "PCBA-912",
    "PCBA-914",
    "PCBA-915",
    "PCBA-924",
    "PCBA-925",
    "PCBA-926",
    "PCBA-927",
    "PCBA-938",
    "PCBA-995",
)


def check_pcba_file(path: Path, *, expected_rows: int = PCBA_EXPECTED_ROWS,
                    tolerance: float = 0.01) -> None:
    """Raise :class:`InputDataError` unless ``path`` looks like MoleculeNet's
    PCBA-128: a smiles column, the 128 DeepChem task columns, and a row count
    within ``tolerance`` of ``expected_rows``."""
    tasks = PCBA_TASKS
    path = Path(path)
    try:
        header = pacsv.open_csv(path).schema.names
    except (pa.ArrowInvalid, OSError) as error:
        raise InputDataError(f"{path}: not a readable PCBA CSV: {error}") from error
    if "smiles" not in header:
        raise InputDataError(f"{path}: PCBA file has no 'smiles' column")
    missing = [task for task in tasks if task not in header]
    if missing:
        raise InputDataError(f"{path}: PCBA file lacks {len(missing)} of the {len(tasks)} "
                             f"task columns (first: {', '.join(missing[:3])})")
    rows = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
        include_columns=["smiles"])).num_rows
    if abs(rows - expected_rows) > tolerance * expected_rows:
        raise InputDataError(f"{path}: PCBA file has {rows:,} rows, expected about "
                             f"{expected_rows:,}; the download may be truncated")


def fetch_pcba(cache_dir: Path | None = None, *, url: str = PCBA_URL,
               expected_rows: int = PCBA_EXPECTED_ROWS) -> Path:
    """The checked PCBA-128 file, downloaded from ``url`` into ``cache_dir``
    on first use (to a .part file renamed when complete, so an interrupted
    download is never mistaken for the data). ``url`` and ``expected_rows``
    are MoleculeNet's unless a test serves a small file of its own."""
    cache_dir = Path(cache_dir or os.environ.get("PCBA_CACHE_DIR", PCBA_DEFAULT_CACHE))
    target = cache_dir / PCBA_FILE_NAME
    if not target.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        logger.info("downloading PCBA-128 from %s to %s", url, target)
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as handle:
                shutil.copyfileobj(response, handle, length=1 << 20)
        except OSError as error:
            raise InputDataError(f"cannot download PCBA-128 from {url}: {error}; "
                                 "download it yourself and pass --pcba-path") from error
        partial.rename(target)
    check_pcba_file(target, expected_rows=expected_rows)
    return target


def pcba_source(path: Path, *, expected_rows: int = PCBA_EXPECTED_ROWS) -> LibrarySource:
    """A checked PCBA-128 CSV as a source: its ids and the 128 DeepChem tasks."""
    check_pcba_file(path, expected_rows=expected_rows)
    return LibrarySource(path, smiles_col="smiles", id_col="mol_id",
                         tasks=list(PCBA_TASKS))
