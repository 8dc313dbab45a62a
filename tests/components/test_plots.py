import numpy as np
import pytest

from components.steps.plots import pareto_front, plot_auc_vs_mflops, plot_search_trajectory

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _history() -> list[dict]:
    points = [(0.45, 0.780, 1.0), (0.44, 0.790, 2.0), (0.46, 0.775, 1.5), (0.43, 0.800, 3.0), (0.44, 0.790, 4.0)]
    return [
        {"index": i, "generation": i // 2 - 1, "val_logloss": loss, "val_auc": auc, "mflops": mflops}
        for i, (loss, auc, mflops) in enumerate(points)
    ]


def test_pareto_front_by_hand():
    mflops = [3.0, 1.0, 2.0, 2.0, 4.0, 1.0, 5.0, 2.0]
    auc = [0.80, 0.70, 0.75, 0.74, 0.80, 0.70, 0.81, 0.75]
    # 3 loses to 2 (same cost, lower AUC); 4 to 0 (dearer, same AUC); 1 and 5 and 2 and 7 are equal pairs
    assert pareto_front(mflops, auc) == [1, 5, 2, 7, 0, 6]
    assert pareto_front([], []) == []
    with pytest.raises(ValueError, match="equal length"):
        pareto_front([1.0, 2.0], [0.5])


@pytest.mark.parametrize("plot", [plot_search_trajectory, plot_auc_vs_mflops])
def test_plots_write_png(plot, tmp_path):
    path = plot(_history(), tmp_path / "figures" / "plot.png")
    assert path == tmp_path / "figures" / "plot.png"
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 5000


@pytest.mark.parametrize("plot", [plot_search_trajectory, plot_auc_vs_mflops])
def test_plots_reject_empty_history(plot, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot([], tmp_path / "plot.png")
    assert not (tmp_path / "plot.png").exists()


@pytest.mark.parametrize("seed", range(5))
def test_pareto_front_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    mflops = rng.integers(0, 6, size=60).astype(float).tolist()  # small ranges: many equal costs and AUCs
    auc = (rng.integers(0, 6, size=60) / 10).tolist()
    dominated = {
        i
        for i in range(60)
        for j in range(60)
        if mflops[j] <= mflops[i] and auc[j] >= auc[i] and (mflops[j], auc[j]) != (mflops[i], auc[i])
    }
    front = pareto_front(mflops, auc)
    assert set(front) == set(range(60)) - dominated
    assert [mflops[i] for i in front] == sorted(mflops[i] for i in front)
