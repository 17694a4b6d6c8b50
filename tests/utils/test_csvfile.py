import pytest

from lrmil.errors import FileFormatError
from lrmil.utils.csvfile import read_csv


@pytest.mark.parametrize("raw", [
    b"slide,label\na,pos\nb,neg\n",
    b"\xef\xbb\xbfslide,label\r\na,pos\r\nb,neg\r\n",  # Excel "CSV UTF-8"
    b"slide;label\na;pos\nb;neg\n",  # Excel with a decimal comma locale
    b"slide\tlabel\na\tpos\n\nb\tneg\n",  # tabs, a blank line
    b" slide , label \na , pos\nb,neg\n",
])
def test_spreadsheet_variants_read_alike(tmp_path, raw):
    path = tmp_path / "labels.csv"
    path.write_bytes(raw)
    table = read_csv(path, "labels CSV", ("slide", "label"))
    assert table.header == ["slide", "label"]
    assert [row for _, row in table.records()] == [{"slide": "a", "label": "pos"},
                                                  {"slide": "b", "label": "neg"}]


def test_line_numbers_count_blank_lines(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("slide,mpp\n\na,0.5\n")
    assert read_csv(path, "mpp CSV").rows == [(3, ["a", "0.5"])]


def test_semicolon_cells_with_decimal_commas(tmp_path):
    path = tmp_path / "mpp.csv"
    path.write_text("slide;mpp\na;0,25\n")
    assert read_csv(path, "mpp CSV", ("slide", "mpp")).records() == [(2, {"slide": "a",
                                                                           "mpp": "0,25"})]


@pytest.mark.parametrize("raw, message", [
    (None, r"labels CSV .*labels.csv does not exist"),
    (b"", r"labels CSV .*labels.csv is empty"),
    (b"slide,label\nn\xe9gatif,1\n", r"labels CSV .*labels.csv line 2: not UTF-8 text"),
    (b"name,class\na,1\n", r"needs the column\(s\) slide,label; its header is 'name,class'"),
])
def test_errors_name_the_file(tmp_path, raw, message):
    path = tmp_path / "labels.csv"
    if raw is not None:
        path.write_bytes(raw)
    with pytest.raises(FileFormatError, match=message):
        read_csv(path, "labels CSV", ("slide", "label"))


def test_a_row_longer_than_the_header_is_refused(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("slide,label\na,b,c\n")
    with pytest.raises(FileFormatError, match=r"labels.csv line 2: 3 cells, the header has 2"):
        read_csv(path, "labels CSV", ("slide", "label")).records()
