import json
import subprocess
import sys

import numpy as np
import pytest
import typer
from PIL import Image

from pneumoscan import __version__
from pneumoscan.cli import app, main


def _all_command_paths():
    root = typer.main.get_command(app)

    def walk(cmd, prefix):
        yield prefix
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, prefix + [name])

    return list(walk(root, []))


@pytest.fixture
def tiny_dataset(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "ds" / "train"
    files = {
        "NORMAL": ["IM-0001-0001.jpeg", "IM-0001-0002.jpeg", "IM-0002-0001.jpeg", "NORMAL2-IM-0003-0001.jpeg"],
        "PNEUMONIA": [
            "person1_bacteria_1.jpeg",
            "person1_bacteria_2.jpeg",
            "person2_virus_3.jpeg",
            "person3_bacteria_4.jpeg",
            "person4_virus_5.jpeg",
            "person5_bacteria_6.jpeg",
        ],
    }
    for cls, names in files.items():
        (root / cls).mkdir(parents=True)
        for name in names:
            Image.fromarray(rng.integers(0, 255, (80, 96), dtype=np.uint8)).save(root / cls / name)
    return tmp_path / "ds"


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"pneumoscan {__version__}"


@pytest.mark.parametrize("path", _all_command_paths(), ids=lambda p: " ".join(p) or "root")
def test_every_command_has_help(path, capsys):
    assert main(path + ["--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage:" in out
    # A useful help says what the command does, not just its options.
    assert len(out.splitlines()) >= 4


@pytest.mark.parametrize(
    "argv", [["no-such-command"], ["data", "summary", "--no-such-option"], ["data", "split", "--val-fraction", "x"]]
)
def test_bad_invocation_is_one_line(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("pneumoscan: error:")
    assert "Traceback" not in err


def test_missing_folder_is_one_line_exit_1(tmp_path, capsys):
    code = main(["data", "summary", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "nowhere" in err


def test_summary_table_and_json(tiny_dataset, tmp_path, capsys):
    out_json = tmp_path / "out" / "summary.json"
    assert main(["data", "summary", str(tiny_dataset), "--split", "train", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "NORMAL" in out and "PNEUMONIA" in out
    s = json.loads(out_json.read_text())
    assert s["images_per_class"] == {"NORMAL": 4, "PNEUMONIA": 6}
    assert s["patients_per_class"] == {"NORMAL": 3, "PNEUMONIA": 5}
    assert s["imbalance_ratio"] == pytest.approx(1.5)


def test_split_writes_manifest(tiny_dataset, tmp_path, capsys):
    manifest = tmp_path / "split.csv"
    code = main(["data", "split", str(tiny_dataset), "--split", "train", "--out", str(manifest),
                 "--val-fraction", "0.4", "--seed", "1"])
    assert code == 0, capsys.readouterr().err
    lines = manifest.read_text().splitlines()
    assert lines[0].split(",")[:3] == ["path", "label", "patient_id"]
    rows = [line.split(",") for line in lines[1:]]
    assert len(rows) == 10
    header = lines[0].split(",")
    side = {}
    for row in rows:
        rec = dict(zip(header, row))
        side.setdefault(rec["patient_id"], set()).add(rec["split"])
    assert all(len(v) == 1 for v in side.values()), side
    assert {s for v in side.values() for s in v} == {"train", "val"}


def test_console_script_runs():
    proc = subprocess.run([sys.executable, "-m", "pneumoscan", "--version"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and __version__ in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "pneumoscan", "bogus"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_package_exports_the_public_api_lazily():
    import subprocess
    import sys

    code = ("import sys, pneumoscan; assert 'torch' not in sys.modules; "
            "from pneumoscan import Predictor, default_model_path, load_config, read_image, rechoose_operating_point; "
            "assert Predictor.__module__ == 'pneumoscan.inference.predictor'; "
            "import pneumoscan.training.loop as t; assert callable(t.train) and t.__name__ == 'pneumoscan.training.loop'; "
            "assert sorted(dir(pneumoscan)) == sorted(pneumoscan.__all__)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_adult_age_default_is_the_scope_gates():
    from pneumoscan.cli.common import ADULT_AGE_DEFAULT
    from pneumoscan.gate.scope import ADULT_AGE_YEARS

    assert ADULT_AGE_DEFAULT == ADULT_AGE_YEARS


def test_the_command_line_starts_without_torch():
    code = ("import sys; from pneumoscan.cli import app, main; assert main(['--help']) == 0; "
            "assert main(['drift', '--help']) == 0; assert 'torch' not in sys.modules, 'torch loaded'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


# ----------------------------------------------------------------------------- predict: the model, the progress bar


def _bad_model(kind: str, path):
    """A ``--model`` that cannot be used: missing, a text file, a picture, a safetensors file cut short."""
    import struct

    from imagefactory import full_range_film, png_bytes

    if kind == "text":
        path.write_text("weights: see the shared drive\n")
    elif kind == "image":
        path.write_bytes(png_bytes(full_range_film(1)))
    elif kind == "corrupt":  # a header that promises more bytes than the file holds (a copy cut short)
        header = json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]},
                             "__metadata__": {"pneumoscan": "{}"}}).encode()
        path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 100)
    return path


@pytest.mark.parametrize("kind", ["missing", "text", "image", "corrupt"])
def test_a_bad_model_is_reported_before_any_onnx_build(kind, tmp_path, monkeypatch, caplog):
    import logging

    from imagefactory import full_range_film, make_png
    from typer.testing import CliRunner

    from pneumoscan.errors import CheckpointError

    film = make_png(tmp_path / "film.png", full_range_film(0))
    model = _bad_model(kind, tmp_path / "model.safetensors")
    monkeypatch.setenv("PNEUMOSCAN_ONNX_CACHE", str(tmp_path / "cache"))
    caplog.set_level(logging.DEBUG)
    result = CliRunner().invoke(app, ["predict", str(film), "--model", str(model), "--no-progress"])
    assert isinstance(result.exception, CheckpointError), result.output
    message = str(result.exception)
    assert message.startswith(str(model)) and ("not found" in message or "checkpoint" in message), message
    assert result.output == ""  # the error is the first thing said
    assert "ONNX" not in caplog.text and "building" not in caplog.text and "export" not in caplog.text
    assert not (tmp_path / "cache").exists()  # nor is the cache folder made for it


def test_a_corrupt_model_is_the_one_line_the_command_prints(tmp_path):
    from imagefactory import full_range_film, make_png

    film = make_png(tmp_path / "film.png", full_range_film(0))
    model = _bad_model("corrupt", tmp_path / "model.safetensors")
    env = {**__import__("os").environ, "PNEUMOSCAN_ONNX_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "pneumoscan", "predict", str(film), "--model", str(model)],
                          capture_output=True, text=True, check=False, env=env)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr  # one line: no build announced first
    assert proc.stderr.startswith(f"pneumoscan: error: {model}: not a readable safetensors checkpoint")


class _Terminal(__import__("io").StringIO):
    """A captured stderr that says it is a terminal, so the progress bar draws."""

    def isatty(self) -> bool:
        return True


def test_the_progress_bar_draws_its_final_line_once(predictor, tmp_path, monkeypatch):
    import tqdm

    from imagefactory import full_range_film, make_png

    films = [make_png(tmp_path / f"{i}.png", full_range_film(i)) for i in range(4)]
    init = tqdm.tqdm.__init__  # every update draws (as a slow batch does), so a second final line would show
    monkeypatch.setattr(tqdm.tqdm, "__init__", lambda self, *a, **k: init(self, *a, **{**k, "mininterval": 0}))
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert len(predictor.score_files(films, batch_size=2, progress=True)) == 4
    frames = [f for f in term.getvalue().replace("\n", "\r").split("\r") if f.strip()]
    assert [f for f in frames if "4/4" in f] == [frames[-1]] and "100%" in frames[-1], frames
    assert any("2/4" in f for f in frames) and term.getvalue().endswith("\n")
