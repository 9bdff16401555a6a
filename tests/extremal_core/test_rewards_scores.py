import pytest
import torch

from extremal_core.rewards import class_scores, contrastive_reward, get_reward, register_reward, simple_reward
from extremal_core.scores import SATURATION, normalized_scores, optimal_area


def test_simple_and_contrastive_rewards():
    scores = torch.tensor([[1.0, 5.0, 3.0], [2.0, 0.0, -1.0]])
    targets = torch.tensor([1, 2])
    assert simple_reward(scores, targets).tolist() == [5.0, -1.0]
    assert contrastive_reward(scores, targets).tolist() == [2.0, -3.0]


def test_fully_convolutional_outputs_are_averaged_over_space():
    out = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    assert torch.equal(class_scores(out), out.mean(dim=(2, 3)))
    with pytest.raises(ValueError, match=r"logits \[N, C\]"):
        class_scores(torch.zeros(2, 3, 4))


def test_registry_lists_valid_rewards_and_accepts_new_ones():
    with pytest.raises(ValueError, match="valid rewards: .*contrastive.*simple"):
        get_reward("nope")
    register_reward("negated_for_test", lambda s, t: -simple_reward(s, t))
    assert get_reward("negated_for_test")(torch.tensor([[1.0, 2.0]]), torch.tensor([1])).item() == -2.0


def test_scores_saturate_at_1_25():
    phi0, phi_min = torch.tensor([10.0]), torch.tensor([0.0])
    preserved = torch.tensor([[0.0, 5.0, 10.0, 30.0]])
    assert normalized_scores(preserved, phi0, phi_min).tolist() == [[0.0, 0.5, 1.0, SATURATION]]


def test_degenerate_span_does_not_divide_by_zero():
    v = normalized_scores(torch.tensor([[3.0, 2.0]]), torch.tensor([3.0]), torch.tensor([3.0]))
    assert torch.isfinite(v).all() and v.tolist() == [[1.0, 1.0]]


def test_optimal_area_is_the_smallest_area_reaching_the_clean_score():
    areas = (0.2, 0.05, 0.1)  # given unsorted on purpose
    scores = torch.tensor([[1.1, 0.4, 1.0], [0.9, 0.3, 0.5]])
    best, reached = optimal_area(scores, areas)
    assert best.tolist() == pytest.approx([0.1, 0.2])
    assert reached.tolist() == [True, False]
