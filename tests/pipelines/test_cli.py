import json

import pytest

from model.arch import Architecture
from model.space import get_space
from pipelines.cli import main


def test_sample_then_inspect(tmp_path, capsys):
    path = tmp_path / "arch.json"
    main(["sample", "--space", "nasrec-small", "--seed", "3", "--out", str(path)])
    arch = Architecture.load(path)
    assert arch.num_blocks == 7 and arch.json_config == "autoctr"
    capsys.readouterr()
    main(["inspect", str(path), "--space", "nasrec-small"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["blocks"] == 7 and summary["mflops_per_sample"] > 0 and summary["embedding_parameters"] == 26e5 * 16


def test_inspect_reports_bad_architecture_and_exits_nonzero(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"num_blocks": 1, "micro": [{}], "macro": [{}]}))
    with pytest.raises(SystemExit, match=r"nasrec inspect: error: .*bad\.json: block 0: missing field"):
        main(["inspect", str(path)])


def test_demo_runs_end_to_end(tmp_path, capsys):
    main(
        ["demo", "--steps", "4", "--warmup-steps", "2", "--batch-size", "64", "--rows", "3000", "--out", str(tmp_path)]
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= metrics["subnet_validation_auc"] <= 1.0 and metrics["steps"] == 4
    Architecture.load(tmp_path / "subnet_architecture.json").check(get_space("demo"))
    assert "validation AUC" in capsys.readouterr().out
