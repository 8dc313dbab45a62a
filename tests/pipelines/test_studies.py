"""The rank-correlation study: supernet scores against the same architectures trained from scratch."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from components.steps.finetune import FinetuneRun
from model.metrics import kendall_tau
from model.trainer import load_checkpoint
from pipelines.studies import RankCorrRun, rank_corr
from tests.conftest import CPU, TINY_SEARCH


def test_rank_correlation_study(ingested: Path, supernet_dir: Path, tmp_path: Path) -> None:
    run = RankCorrRun(
        architectures=4,
        search=TINY_SEARCH,
        train=FinetuneRun(steps=20, batch_size=256, eval_every=10, progress=False),
    )
    result = rank_corr(supernet_dir / "checkpoint.pt", ingested, tmp_path, run, CPU)
    assert result["architectures"] == 4
    for key in ("without_finetuning", "with_finetuning"):
        assert -1.0 <= result[key]["kendall_tau"] <= 1.0
        assert -1.0 <= result[key]["spearman_rho"] <= 1.0
    rows = json.loads((tmp_path / "rank_corr_rows.json").read_text())
    assert len({json.dumps(r["architecture"]) for r in rows}) == 4
    assert result["truth_repeatability"] is None  # one run per architecture has nothing to be compared with
    low, high = result["with_finetuning"]["kendall_tau_interval"]
    assert -1.0 <= low <= result["with_finetuning"]["kendall_tau"] <= high <= 1.0
    misranked = result["most_misranked"]
    assert len(misranked) == 4  # at most five: every architecture of this small study
    gaps = [abs(m["score_rank"] - m["truth_rank"]) for m in misranked]
    assert gaps == sorted(gaps, reverse=True)
    for m in misranked:
        row = rows[m["architecture"] - 1]
        assert m["fine_tuned_log_loss"] == row["val_logloss"]
        assert m["score_rank"] == sorted(r["val_logloss"] for r in rows).index(row["val_logloss"]) + 1
        assert m["truth_rank"] == sorted(r["truth_log_loss"] for r in rows).index(row["truth_log_loss"]) + 1


def test_a_rank_correlation_truth_is_the_mean_of_seeded_runs(
    ingested: Path, supernet_dir: Path, tmp_path: Path
) -> None:
    train = FinetuneRun(steps=10, batch_size=256, progress=False)
    run = RankCorrRun(architectures=4, search=TINY_SEARCH, train=train, truth_runs=2)
    result = rank_corr(supernet_dir / "checkpoint.pt", ingested, tmp_path, run, CPU)
    rows = json.loads((tmp_path / "rank_corr_rows.json").read_text())
    first = [r["standalone"][0]["log_loss"] for r in rows]
    second = [r["standalone"][1]["log_loss"] for r in rows]
    assert first != second  # run 1 has its own initialisation and data order
    assert [r["truth_log_loss"] for r in rows] == pytest.approx([(a + b) / 2 for a, b in zip(first, second)])
    assert result["truth_repeatability"]["kendall_tau"] == pytest.approx(kendall_tau(first, second))
    mean = [r["truth_log_loss"] for r in rows]
    assert result["mflops_only"]["kendall_tau"] == pytest.approx(kendall_tau([-r["mflops"] for r in rows], mean))
    runs = [json.loads(line) for line in (tmp_path / "standalone_run1.jsonl").read_text().splitlines()]
    assert {(r["init_seed"], r["train"]["seed"]) for r in runs} == {(1, 1)}
    with pytest.raises(ValueError, match="truth_runs must be at least 1"):
        RankCorrRun(truth_runs=0)


def test_a_rank_correlation_study_reuses_architectures_trained_earlier(
    ingested: Path, supernet_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = RankCorrRun(architectures=3, search=TINY_SEARCH, train=FinetuneRun(steps=10, batch_size=256, progress=False))
    checkpoint = supernet_dir / "checkpoint.pt"
    rank_corr(checkpoint, ingested, tmp_path, run, CPU)
    trained = tmp_path / "standalone_run0.jsonl"
    records = [json.loads(line) for line in trained.read_text().splitlines()]
    records[0]["standalone"]["log_loss"] = 123.0  # a marker: only a reused result carries it
    trained.write_text("".join(json.dumps(r) + "\n" for r in records))

    rank_corr(checkpoint, ingested, tmp_path, replace(run, architectures=4), CPU)  # extends the study
    rows = json.loads((tmp_path / "rank_corr_rows.json").read_text())
    assert [r["architecture"] for r in rows[:3]] == [r["architecture"] for r in records]
    assert rows[0]["standalone"][0]["log_loss"] == 123.0
    assert len(trained.read_text().splitlines()) == 4
    capsys.readouterr()
    rank_corr(checkpoint, ingested, tmp_path, replace(run, architectures=4, workers=2), CPU)  # nothing to train
    assert "all 4 from-scratch runs were trained earlier" in capsys.readouterr().out
    assert len(trained.read_text().splitlines()) == 4

    other = replace(run, train=replace(run.train, lr=0.05))
    with pytest.raises(ValueError, match=r"standalone_run0\.jsonl holds architectures trained with other settings"):
        rank_corr(checkpoint, ingested, tmp_path, other, CPU)


def test_a_rank_correlation_study_reuses_scores_until_the_supernet_or_fitness_changes(
    ingested: Path, supernet_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = RankCorrRun(architectures=3, search=TINY_SEARCH, train=FinetuneRun(steps=5, batch_size=256, progress=False))
    checkpoint = supernet_dir / "checkpoint.pt"
    rank_corr(checkpoint, ingested, tmp_path, run, CPU)
    [scores] = tmp_path.glob("scores_*.jsonl")
    records = [json.loads(line) for line in scores.read_text().splitlines()]
    records[0]["val_logloss"] = 123.0  # a marker: only a reused score carries it
    scores.write_text("".join(json.dumps(r) + "\n" for r in records))

    copied = Path(shutil.copy(checkpoint, tmp_path / "copied.pt"))  # the same weights elsewhere: the same scores
    capsys.readouterr()
    rank_corr(copied, ingested, tmp_path, replace(run, architectures=4), CPU)  # extends the study
    assert "3 of 4 scores are reused" in capsys.readouterr().out
    rows = json.loads((tmp_path / "rank_corr_rows.json").read_text())
    assert rows[0]["val_logloss"] == 123.0
    assert "key" not in rows[0]
    assert len(scores.read_text().splitlines()) == 4

    state = load_checkpoint(checkpoint)
    name = next(iter(state["model"]))
    state["model"][name] = state["model"][name] + 0.1
    torch.save(state, tmp_path / "changed.pt")
    other_fitness = replace(run, search=replace(TINY_SEARCH, eval_batches=1))
    for path, study in ((tmp_path / "changed.pt", run), (checkpoint, other_fitness)):
        capsys.readouterr()
        rank_corr(path, ingested, tmp_path, study, CPU)
        assert "scores are reused" not in capsys.readouterr().out
        assert json.loads((tmp_path / "rank_corr_rows.json").read_text())[0]["val_logloss"] != 123.0
    assert len(list(tmp_path.glob("scores_*.jsonl"))) == 3


def test_a_rank_correlation_study_trains_in_worker_processes(
    ingested: Path, supernet_dir: Path, tmp_path: Path
) -> None:
    train = FinetuneRun(steps=10, batch_size=256, progress=False)
    run = RankCorrRun(architectures=3, search=TINY_SEARCH, train=train, truth_runs=2)
    checkpoint = supernet_dir / "checkpoint.pt"
    alone = rank_corr(checkpoint, ingested, tmp_path / "alone", run, CPU)
    parallel = rank_corr(checkpoint, ingested, tmp_path / "parallel", replace(run, workers=2), CPU)
    for name in ("alone", "parallel"):
        for k in (0, 1):
            assert len((tmp_path / name / f"standalone_run{k}.jsonl").read_text().splitlines()) == 3
    rows = [json.loads((tmp_path / name / "rank_corr_rows.json").read_text()) for name in ("alone", "parallel")]
    truths = [[r["truth_log_loss"] for r in study] for study in rows]
    assert truths[1] == pytest.approx(truths[0], abs=1e-5)  # rows in architecture order, whatever ends first
    assert parallel["with_finetuning"] == alone["with_finetuning"]
    with pytest.raises(ValueError, match="workers must be at least 1"):
        RankCorrRun(workers=0)
