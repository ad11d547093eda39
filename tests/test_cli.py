"""The ckdlab command line."""
import json

from ckdlab.cli import main


def test_train_prints_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "result.json"
    code = main(["train", "--data", "synthetic", "--backbone", "vbpr", "--epochs", "2", "--set", "batch_size=1024",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "recall@20" in text and "text channel" in text and "image channel" in text
    data = json.loads(out.read_text())
    assert data["config"]["backbone"] == "vbpr" and data["epochs_run"] == 2
    # second call: the result cache answers
    assert main(["train", "--data", "synthetic", "--backbone", "vbpr", "--epochs", "2", "--set", "batch_size=1024",
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    assert "[cached result]" in capsys.readouterr().out


def test_a_model_without_features_prints_no_channel_rows(tmp_path, capsys):
    assert main(["train", "--data", "synthetic", "--backbone", "MF", "--epochs", "1", "--set", "batch_size=1024",
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "text channel" not in text and "does not use the features" in text


def test_data_summary_ok_and_error(tmp_path, capsys):
    assert main(["data", "summary", "synthetic"]) == 0
    assert json.loads(capsys.readouterr().out)["users"] == 2000
    (tmp_path / "broken.inter").write_text("userID\titemID\tx_label\n0\t1\t7\n")
    assert main(["data", "summary", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "broken.inter" in err


def test_bad_setting_exits_nonzero(capsys):
    assert main(["train", "--set", "nonsense=1", "--quiet"]) == 2
    assert "unknown setting" in capsys.readouterr().err
