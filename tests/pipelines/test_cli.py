import json
import re

import pytest

from model.arch import Architecture
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


@pytest.mark.parametrize(
    "command", ["ingest", "train-supernet", "search", "finetune", "evaluate", "export", "deploy", "rank-corr"]
)
def test_every_option_of_the_model_steps_is_explained(command):
    from pipelines.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if a.choices and command in a.choices)
    options = [a for a in subparsers.choices[command]._actions if a.dest != "help"]
    assert options
    for option in options:
        assert option.help and len(option.help) > 10, f"{command} {option.option_strings}: no help"


def test_cli_choices_are_the_library_names():
    from components.steps import search
    from model.training import OPTIMIZERS
    from pipelines.cli import FINETUNE_SPLITS, OPTIMIZER_NAMES

    assert sorted(OPTIMIZER_NAMES) == sorted(OPTIMIZERS)
    assert FINETUNE_SPLITS == search.FINETUNE_SPLITS


def test_fitness_options_take_each_methods_defaults_unless_given():
    from model.search import FitnessConfig
    from pipelines.cli import build_parser, fitness_config

    def parsed(*options: str) -> FitnessConfig:
        args = ["search", "--data", "d", "--out", "o", "--supernet", "s.pt", *options]
        return fitness_config(build_parser().parse_args(args))

    assert parsed() == FitnessConfig(500, 0.04, 50, "head")
    assert parsed("--fitness", "subnet") == FitnessConfig(600, 0.12, 60, "subnet")
    assert parsed("--fitness", "subnet", "--finetune-steps", "300") == FitnessConfig(300, 0.12, 30, "subnet")
    given = ("--finetune-lr", "0.2", "--finetune-warmup-steps", "0")
    assert parsed("--fitness", "subnet", *given) == FitnessConfig(600, 0.2, 0, "subnet")


def test_model_steps_through_the_cli(ingested, tmp_path, capsys):
    """train-supernet -> search -> finetune (in two processes) -> evaluate with its gate both ways, and a clear
    error for a missing checkpoint."""
    data = ["--data", str(ingested), "--device", "cpu"]
    main(["train-supernet", *data, "--steps", "6", "--batch-size", "64", "--out", str(tmp_path / "s")])
    search = ["--population", "3", "--generations", "1", "--sample-size", "2", "--children", "1"]
    search += ["--finetune-steps", "5", "--finetune-batches", "2", "--eval-batches", "1", "--top-k", "2"]
    main(["search", *data, "--supernet", str(tmp_path / "s" / "checkpoint.pt"), *search, "--out", str(tmp_path / "x")])
    top = tmp_path / "x" / "top_k.json"
    finetune = ["--architectures", str(top), "--top-k", "2", "--steps", "4", "--workers", "2"]
    main(["finetune", *data, *finetune, "--out", str(tmp_path / "f")])
    assert (tmp_path / "f" / "winner" / "architecture.json").exists()
    assert re.search(r"winner: candidate [01]: validation AUC", capsys.readouterr().out)
    evaluate = ["evaluate", "--model", str(tmp_path / "f" / "winner"), *data, "--out", str(tmp_path / "e")]
    main([*evaluate, "--min-auc", "0"])
    printed = capsys.readouterr().out
    assert re.search(r"test AUC 0\.\d{4}, log loss \d\.\d{4}; deploy: .*no model is served yet", printed)
    with pytest.raises(SystemExit) as gate:
        main([*evaluate, "--min-auc", "1"])
    assert gate.value.code == 3 and "keep: test AUC" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"nasrec search: error: .*missing\.pt: not a readable checkpoint"):
        main(["search", *data, "--supernet", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "y")])
