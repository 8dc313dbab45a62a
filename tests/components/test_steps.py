"""The model steps over ingested data: supernet training, search (seeded, resumable, parallel) and fine-tuning."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

import components.steps.train_supernet as supernet_step
from components.steps.data import IngestedData
from components.steps.finetune import FinetuneRun, finetune, read_architectures
from components.steps.search import (
    fixed_batches,
    latency_model,
    latency_prefilter,
    measured_top_k,
    search,
    seed_records,
)
from components.steps.train_supernet import SupernetRun, train_supernet
from model.arch import Architecture
from model.network import InputSchema
from model.sampling import ArchitectureSampler
from model.search import FitnessConfig, build_fitness
from model.space import get_space
from model.trainer import evaluate, load_checkpoint, load_model
from model.zoo import seed_architectures
from serving.latency import LatencyBudget, LatencyModel
from tests.conftest import CPU, TINY_SEARCH, TINY_SUBNET_FITNESS, TINY_SUBNET_SEARCH


def test_a_short_supernet_run_lowers_validation_log_loss(supernet_dir: Path) -> None:
    metrics = json.loads((supernet_dir / "metrics.json").read_text())
    before, after = metrics["validation_before"], metrics["validation_after"]
    assert after["full_path"]["log_loss"] < before["full_path"]["log_loss"]
    assert after["subnet_mean_log_loss"] < before["subnet_mean_log_loss"]
    assert metrics["training"]["steps"] == 300
    assert metrics["training"]["samples_per_second"] > 0


def test_a_supernet_run_too_short_to_rank_subnets_is_warned_about(
    ingested: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = SupernetRun(steps=4, batch_size=64, progress=False)
    train_supernet(ingested, tmp_path / "short", run, CPU)
    assert "warning: 4 supernet steps" in capsys.readouterr().err
    monkeypatch.setattr(supernet_step, "MIN_SUPERNET_STEPS", 4)
    train_supernet(ingested, tmp_path / "enough", run, CPU)
    assert "warning" not in capsys.readouterr().err


def _history(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]


def _without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_a_seeded_search_is_reproducible_and_resumes(ingested: Path, supernet_dir: Path, tmp_path: Path) -> None:
    checkpoint = supernet_dir / "checkpoint.pt"
    first = search(checkpoint, ingested, tmp_path / "a", TINY_SEARCH, CPU)
    search(checkpoint, ingested, tmp_path / "b", TINY_SEARCH, CPU)
    history = _history(tmp_path / "a")
    assert len(history) == TINY_SEARCH.search.evaluations == 12
    assert _without_timing(history) == _without_timing(_history(tmp_path / "b"))
    assert [r["generation"] for r in history] == [-1] * 6 + [0, 0, 1, 1, 2, 2]
    assert first["best"]["val_logloss"] == min(r["val_logloss"] for r in history)
    for name in ("top_k.json", "search_trajectory.png", "auc_vs_mflops.png", "summary.json"):
        assert (tmp_path / "a" / name).stat().st_size > 0

    # interrupted after 7 evaluations, the last line torn: the resumed search ends with the same history
    lines = (tmp_path / "a" / "history.jsonl").read_text().splitlines()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "history.jsonl").write_text("\n".join(lines[:7]) + "\n" + lines[7][:40])
    search(checkpoint, ingested, tmp_path / "c", TINY_SEARCH, CPU)
    resumed = _history(tmp_path / "c")
    assert _without_timing(resumed) == _without_timing(history)
    assert [r["seconds"] for r in resumed[:7]] == [r["seconds"] for r in history[:7]]  # reused, not re-evaluated
    other = replace(TINY_SEARCH, search=replace(TINY_SEARCH.search, seed=2))
    with pytest.raises(ValueError, match="other inputs or options"):
        search(checkpoint, ingested, tmp_path / "c", other, CPU)
    more = search(checkpoint, ingested, tmp_path / "c", replace(TINY_SEARCH, top_k=5), CPU)  # reads only
    assert len(json.loads((tmp_path / "c" / "top_k.json").read_text())) == 5
    assert _without_timing(_history(tmp_path / "c")) == _without_timing(history) and more["evaluations"] == 12
    recorded = json.loads((tmp_path / "c" / "search.json").read_text())
    del recorded["finetune_split"]  # as written before that option, and before top_k was output-only
    del recorded["search"]["fitness"]["method"]  # and before the subnet fitness
    (tmp_path / "c" / "search.json").write_text(json.dumps({**recorded, "top_k": 3, "workers": 1}))
    assert search(checkpoint, ingested, tmp_path / "c", TINY_SEARCH, CPU)["evaluations"] == 12


def test_head_finetuning_on_validation_uses_the_batches_after_the_scored_ones(ingested: Path) -> None:
    data = IngestedData(ingested)
    run = replace(TINY_SEARCH, finetune_split="validation")
    tuning, evaluation = fixed_batches(data, run, seed=0)
    validation = list(data.batches("validation", run.batch_size))
    assert (len(evaluation), len(tuning)) == (2, 3)
    for got, want in zip(evaluation + tuning, validation):
        assert torch.equal(got.sparse, want.sparse) and torch.equal(got.label, want.label)
    with pytest.raises(ValueError, match="no validation rows are left after the 8 scored batches"):
        fixed_batches(data, replace(run, eval_batches=len(validation)), seed=0)
    with pytest.raises(ValueError, match="finetune_split: 'test' is not one of train, validation"):
        replace(run, finetune_split="test")


def test_a_search_fine_tuning_on_validation_is_its_own_search(
    ingested: Path, supernet_dir: Path, tmp_path: Path
) -> None:
    checkpoint = supernet_dir / "checkpoint.pt"
    run = replace(TINY_SEARCH, finetune_split="validation")
    search(checkpoint, ingested, tmp_path / "v", run, CPU)
    assert json.loads((tmp_path / "v" / "search.json").read_text())["finetune_split"] == "validation"
    assert len(_history(tmp_path / "v")) == 12
    with pytest.raises(ValueError, match="other inputs or options"):
        search(checkpoint, ingested, tmp_path / "v", TINY_SEARCH, CPU)


def test_parallel_workers_evaluate_the_same_search(ingested: Path, supernet_dir: Path, tmp_path: Path) -> None:
    checkpoint = supernet_dir / "checkpoint.pt"
    search(checkpoint, ingested, tmp_path / "one", TINY_SEARCH, CPU)
    search(checkpoint, ingested, tmp_path / "two", replace(TINY_SEARCH, workers=2), CPU)
    one, two = _history(tmp_path / "one"), _history(tmp_path / "two")
    assert [r["architecture"] for r in one] == [r["architecture"] for r in two]
    for a, b in zip(one, two):
        assert a["val_logloss"] == pytest.approx(b["val_logloss"], abs=1e-5)


def test_subnet_fitness_scores_warm_start_training_and_leaves_the_supernet_unchanged(
    ingested: Path, supernet_dir: Path, tmp_path: Path
) -> None:
    data = IngestedData(ingested)
    tuning, evaluation = fixed_batches(data, TINY_SUBNET_SEARCH, seed=0)
    assert len(tuning) == 10  # one distinct training batch per step, not the head's 3 cycled
    supernet = load_model(supernet_dir / "checkpoint.pt")
    weights = {name: value.clone() for name, value in supernet.state_dict().items()}
    arch = ArchitectureSampler(supernet.space, 5).sample()
    fitness = build_fitness(supernet, tuning, evaluation, TINY_SUBNET_FITNESS, CPU)
    first, again = fitness(arch), fitness(arch)
    assert _without_timing([first]) == _without_timing([again])
    for name, value in supernet.state_dict().items():
        assert torch.equal(value, weights[name]), name

    # the score is the validation log loss of `nasrec finetune --warm-start` for as many steps, on the same rows
    run = FinetuneRun(steps=10, batch_size=256, lr=0.05, warm_start=True, progress=False)
    finetune([arch], ingested, tmp_path / "warm", run, CPU, supernet_path=supernet_dir / "checkpoint.pt")
    trained = load_model(tmp_path / "warm" / "winner" / "checkpoint.pt")
    assert first["val_logloss"] == pytest.approx(evaluate(trained, evaluation, CPU)["log_loss"], abs=1e-6)
    assert first["val_logloss"] != first["supernet_logloss"]
    head = build_fitness(supernet, tuning[:3], evaluation, TINY_SEARCH.search.fitness, CPU)(arch)
    assert first["supernet_logloss"] == pytest.approx(head["supernet_logloss"], abs=1e-5)  # one inherited score

    with pytest.raises(ValueError, match="10 steps need as many training batches, got 3"):
        build_fitness(supernet, tuning[:3], evaluation, TINY_SUBNET_FITNESS, CPU)
    with pytest.raises(ValueError, match="subnet fitness trains whole subnets, on training rows only"):
        replace(TINY_SUBNET_SEARCH, finetune_split="validation")
    with pytest.raises(ValueError, match="fitness method: 'body' is not one of head, subnet"):
        FitnessConfig(method="body")
    with pytest.raises(ValueError, match=r"finetune_warmup_steps: must be in \[0, finetune_steps=10\), got 10"):
        replace(TINY_SUBNET_FITNESS, finetune_warmup_steps=10)


def test_a_search_with_the_subnet_fitness_gives_the_same_scores_in_workers(
    ingested: Path, supernet_dir: Path, tmp_path: Path
) -> None:
    checkpoint = supernet_dir / "checkpoint.pt"
    run = replace(TINY_SUBNET_SEARCH, search=replace(TINY_SUBNET_SEARCH.search, population=3, generations=1))
    search(checkpoint, ingested, tmp_path / "one", run, CPU)
    search(checkpoint, ingested, tmp_path / "two", replace(run, workers=2), CPU)
    one, two = _history(tmp_path / "one"), _history(tmp_path / "two")
    assert len(one) == 5 and [r["architecture"] for r in one] == [r["architecture"] for r in two]
    for a, b in zip(one, two):
        assert a["val_logloss"] == pytest.approx(b["val_logloss"], abs=1e-5)
    with pytest.raises(ValueError, match="other inputs or options"):  # a head search is another search
        search(
            checkpoint,
            ingested,
            tmp_path / "one",
            replace(run, search=replace(run.search, fitness=FitnessConfig())),
            CPU,
        )


def test_a_tight_mflops_budget_is_respected_or_reported(ingested: Path, supernet_dir: Path, tmp_path: Path) -> None:
    checkpoint = supernet_dir / "checkpoint.pt"
    budget = replace(TINY_SEARCH, search=replace(TINY_SEARCH.search, max_mflops=0.15))
    search(checkpoint, ingested, tmp_path / "cheap", budget, CPU)
    assert max(r["mflops"] for r in _history(tmp_path / "cheap")) <= 0.15
    impossible = replace(TINY_SEARCH, search=replace(TINY_SEARCH.search, max_mflops=1e-6))
    with pytest.raises(ValueError, match="max-mflops"):
        search(checkpoint, ingested, tmp_path / "none", impossible, CPU)


def test_a_latency_budget_prefilters_with_a_calibrated_model_and_measures_the_top_k(
    ingested: Path, supernet_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    checkpoint, out = supernet_dir / "checkpoint.pt", tmp_path / "within"
    run = replace(TINY_SEARCH, top_k=2, max_latency_ms=10_000.0, latency_batch=64, latency_calibration=5)
    search(checkpoint, ingested, out, run, CPU)
    top = json.loads((out / "top_k.json").read_text())
    assert len(top) == 2 and all(0 < r["latency_p50_ms"] <= r["latency_p99_ms"] for r in top)  # measured
    model = json.loads((out / "latency_model.json").read_text())
    assert model["batch_size"] == 64 and len(model["weights"]) == 3 and model["error"] >= 0
    assert capsys.readouterr().out.count("latency calibration") == 5
    # a resumed search reads the recorded model, so its filter decides as before
    assert asdict(latency_model(load_model(checkpoint), run, out)) == model | {"weights": tuple(model["weights"])}
    assert "latency calibration" not in capsys.readouterr().out

    schema = IngestedData(ingested).input_schema
    with pytest.raises(ValueError, match=r"none of the 1 best architectures meets the latency budget of 1e-06 ms"):
        measured_top_k(_history(out)[:1], 1, LatencyBudget(1e-6, batch_size=64), schema)


def test_the_latency_prefilter_drops_what_the_model_predicts_over_the_widened_budget(ingested: Path) -> None:
    schema = IngestedData(ingested).input_schema
    arch = ArchitectureSampler(get_space("demo"), seed=4).sample()
    cheap = Architecture(tuple(replace(b, sparse_op="efc") for b in arch.blocks))
    costly = Architecture(tuple(replace(b, sparse_op="attention", sparse_tokens=32) for b in arch.blocks))
    by_attention = LatencyModel(weights=(0.0, 1.0, 0.0), batch_size=512, error=0.5)  # ms per 100 tokens
    admissible = latency_prefilter(by_attention, LatencyBudget(0.2), schema)  # 0.3 ms with the model's error
    assert admissible(cheap) and not admissible(costly)


def test_finetune_picks_the_best_on_validation(ingested: Path, supernet_dir: Path, tmp_path: Path) -> None:
    search_dir = tmp_path / "search"
    search(supernet_dir / "checkpoint.pt", ingested, search_dir, TINY_SEARCH, CPU)
    archs = read_architectures(search_dir / "top_k.json", 2)
    run = FinetuneRun(steps=30, batch_size=256, eval_every=10, progress=False)
    metrics = finetune(archs, ingested, tmp_path / "finetune", run, CPU)
    winner = metrics["winner"]
    assert winner["validation"]["auc"] == max(c["validation"]["auc"] for c in metrics["candidates"])
    assert "test" not in winner  # the test split is the evaluate step's alone
    saved = tmp_path / "finetune" / "winner"
    model = load_model(saved / "checkpoint.pt")
    assert model.arch.to_dict() == json.loads((saved / "architecture.json").read_text())
    assert json.loads((saved / "metrics.json").read_text())["winner"] == winner


def test_finetune_in_worker_processes_trains_as_one_process_does(
    ingested: Path, supernet_dir: Path, tmp_path: Path
) -> None:
    sampler = ArchitectureSampler(load_model(supernet_dir / "checkpoint.pt").space, 7)
    archs = [sampler.sample() for _ in range(3)]
    run = FinetuneRun(steps=20, batch_size=256, eval_every=10, progress=False)
    alone = finetune(archs, ingested, tmp_path / "alone", run, CPU)
    parallel = finetune(archs, ingested, tmp_path / "parallel", run, CPU, workers=2)
    assert [c["rank"] for c in parallel["candidates"]] == [0, 1, 2]
    for one, other in zip(alone["candidates"], parallel["candidates"]):
        assert other["architecture"] == one["architecture"]
        assert other["validation"]["log_loss"] == pytest.approx(one["validation"]["log_loss"], abs=1e-5)
    assert parallel["winner"]["rank"] == alone["winner"]["rank"]
    assert parallel["winner"]["validation"]["auc"] == pytest.approx(alone["winner"]["validation"]["auc"], abs=1e-5)
    with pytest.raises(ValueError, match="workers must be at least 1"):
        finetune(archs, ingested, tmp_path / "none", run, CPU, workers=0)


def test_warm_start_begins_from_the_inherited_weights(ingested: Path, supernet_dir: Path, tmp_path: Path) -> None:
    checkpoint = supernet_dir / "checkpoint.pt"
    supernet = load_model(checkpoint)
    arch = ArchitectureSampler(supernet.space, 4).sample()
    run = FinetuneRun(steps=1, batch_size=256, lr=1e-9, warm_start=True, progress=False)
    finetune([arch], ingested, tmp_path / "warm", run, CPU, supernet_path=checkpoint)
    trained = load_checkpoint(tmp_path / "warm" / "winner" / "checkpoint.pt")["model"]
    inherited = supernet.extract(arch).state_dict()
    for name, value in inherited.items():
        assert torch.allclose(trained[name], value, atol=1e-6), name
    with pytest.raises(ValueError, match="--warm-start needs --supernet"):
        finetune([arch], ingested, tmp_path / "x", run, CPU)


def test_the_data_fingerprint_follows_content_not_the_folder(ingested: Path, tmp_path: Path) -> None:
    moved = shutil.copytree(ingested, tmp_path / "moved")
    assert IngestedData(moved).fingerprint() == IngestedData(ingested).fingerprint()
    (moved / "transform.json").write_text((moved / "transform.json").read_text() + "\n")
    assert IngestedData(moved).fingerprint() != IngestedData(ingested).fingerprint()


def test_the_final_round_adds_the_seeds_the_top_k_lacks_as_the_search_scored_them() -> None:
    space = get_space("ctr")
    seeds = dict(zip(space.seed_architectures, seed_architectures(space)))
    other = ArchitectureSampler(space, seed=0).sample()
    records = [
        {"architecture": arch.to_dict(), "val_logloss": 0.40 + i / 100}
        for i, arch in enumerate([other, *list(seeds.values())[:-1]])  # the last seed was over budget: unscored
    ]
    best = [records[0], records[2]]  # the top 2: another architecture and the second seed
    schema = InputSchema(1, (5, 7))
    extra = seed_records(records, seeds, best, None, schema)
    assert [r["seed"] for r in extra] == [n for n in space.seed_architectures[:-1] if n != space.seed_architectures[1]]
    assert all(r == {**records[1 + list(seeds).index(r["seed"])], "seed": r["seed"]} for r in extra)
    assert not seed_records(records, seeds, best, LatencyBudget(1e-6, batch_size=8), schema)  # none that fast
    measured = seed_records(records, seeds, best, LatencyBudget(10_000.0, batch_size=8), schema)
    assert [r["seed"] for r in measured] == [r["seed"] for r in extra]
    assert all(0 < r["latency_p50_ms"] <= r["latency_p99_ms"] for r in measured)
