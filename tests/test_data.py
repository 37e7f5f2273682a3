"""WikiText-2 resolution from the local data folder, and the one-line error when absent."""
import pytest

from sweeper.data import load_wikitext
from sweeper.errors import ConfigError, DataNotFoundError


def test_local_raw_test_split_is_the_shared_file(data_dir):
    t = load_wikitext("wikitext-2-raw-v1", "test")
    assert t.source == str(data_dir / "wikitext-2-raw-v1" / "wiki.test.raw")
    assert t.text.startswith(" = Robert Boulter = \n")
    assert "\r" not in t.text and t.text.count("\n") == 2890  # 2,891 non-empty rows
    assert "'\\n'" in t.join


def test_tokenized_validation_split(data_dir):
    t = load_wikitext("wikitext-2-v1", "validation")
    assert len(t.text.split()) == 213_886
    assert "<unk>" in t.text


def test_missing_split_gives_one_line_naming_where_it_looked(data_dir, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataNotFoundError) as err:
        load_wikitext("wikitext-2-raw-v1", "train")
    msg = str(err.value)
    assert "\n" not in msg and "train" in msg and str(data_dir) in msg and "SWEEPER_DATA_DIR" in msg


def test_parquet_hub_layout(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "wikitext" / "wikitext-2-raw-v1"
    d.mkdir(parents=True)
    pq.write_table(pa.table({"text": [" = A = \n", "", " b c \n"]}), d / "test-00000-of-00001.parquet")
    monkeypatch.setenv("SWEEPER_DATA_DIR", str(tmp_path))
    t = load_wikitext("wikitext-2-raw-v1", "test")
    assert t.text == "\n\n".join([" = A = \n", "", " b c \n"]) and "parquet" in t.source


def test_bad_split_name():
    with pytest.raises(ConfigError, match="split='dev'"):
        load_wikitext("wikitext-2-raw-v1", "dev")
