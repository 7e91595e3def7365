"""The exact signals (healthcheck/signals.py) measured on real tensors: gradients carried
over between optimizer steps, a term's gradient reach to the output, the pairing gap.
Each is checked where it must report and where it must not (accumulation, zero_grad
without set_to_none, a fresh zeros tensor, a term that is truly zero)."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch
from torch import nn

from healthcheck.signals import GradClearWatch, pairing_gap, term_reach


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))


def _steps(model, opt, watch, clear, n=3, accumulate=1):
    found = []
    for _ in range(n):
        clear()
        for _ in range(accumulate):
            model(torch.randn(5, 3)).pow(2).mean().backward()
        found.append(watch.take())
        opt.step()
    return found


@pytest.mark.parametrize("clear", ["none", "zero_in_place", "fresh_zeros", "module"])
def test_cleared_gradients_are_not_reported(clear):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    watch = GradClearWatch(list(model.named_parameters()), opt)

    def do_clear():
        if clear == "none":
            opt.zero_grad(set_to_none=True)
        elif clear == "zero_in_place":
            opt.zero_grad(set_to_none=False)
        elif clear == "fresh_zeros":
            for p in model.parameters():
                if p.grad is not None:
                    p.grad = torch.zeros_like(p)
        else:
            model.zero_grad()

    assert _steps(model, opt, watch, do_clear, accumulate=2) == [(), (), ()]


def test_a_forgotten_zero_grad_is_reported_from_the_second_step():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    watch = GradClearWatch(list(model.named_parameters()), opt)
    found = _steps(model, opt, watch, lambda: None)
    assert found[0] == ()
    assert found[1] == found[2] == ("0.weight", "0.bias", "2.weight", "2.bias")


def test_clearing_only_one_module_reports_the_others():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    watch = GradClearWatch(list(model.named_parameters()), opt)
    found = _steps(model, opt, watch, lambda: model[2].zero_grad())
    assert found[1] == ("0.weight", "0.bias")


def test_clipping_before_the_step_does_not_hide_it_and_remove_takes_the_hooks_off():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    watch = GradClearWatch(list(model.named_parameters()), opt)
    for _ in range(2):
        model(torch.randn(5, 3)).pow(2).mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
        opt.step()
    assert len(watch.take()) == 4
    watch.remove()
    model(torch.randn(5, 3)).pow(2).mean().backward()
    opt.step()
    model(torch.randn(5, 3)).pow(2).mean().backward()
    assert watch.take() == ()


def test_hooks_do_not_warn_when_the_model_is_pickled():
    model = _model()
    GradClearWatch(list(model.named_parameters()), torch.optim.SGD(model.parameters(), lr=0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pickle.dumps(model)


def test_term_reach_sees_a_detached_prediction_and_keeps_the_graph():
    model = _model()
    out = model(torch.randn(5, 3))
    terms = {"fit": out.pow(2).mean(), "detached": out.detach().abs().mean() + 1.0,
             "off": out.sum() * 0.0, "negative_weight": out.mean()}
    reach = term_reach(out, terms, {"fit": 1.0, "detached": 0.5, "off": 1.0, "negative_weight": -1.0})
    assert set(reach) == {"fit", "detached", "off"}
    assert reach["fit"][1] > 0 and reach["detached"] == (pytest.approx(reach["detached"][0]), 0.0)
    assert reach["off"][0] == 0.0
    terms["fit"].backward()  # the loop's own backward still works
    assert model[0].weight.grad is not None


def test_term_reach_follows_any_output_of_a_tuple():
    x = torch.randn(4, 2, requires_grad=True)
    recon, mu = x * 2, x.mean(1)
    reach = term_reach((recon, mu), {"recon": recon.pow(2).mean(), "kl": mu.pow(2).mean() + 0.1})
    assert all(norm > 0 for _, norm in reach.values())


def test_pairing_gap_is_large_for_a_fitted_output_and_none_for_one_sample():
    y = torch.randn(16, 3)
    true, shuffled = pairing_gap(y + 0.01, y, nn.functional.mse_loss, torch.Generator().manual_seed(0))
    assert true < 0.001 < 0.5 < shuffled
    mean_only = y.mean(0, keepdim=True).expand_as(y)
    true, shuffled = pairing_gap(mean_only, y, nn.functional.mse_loss, torch.Generator().manual_seed(0))
    assert true == pytest.approx(shuffled)
    assert pairing_gap(y[:1], y[:1], nn.functional.mse_loss) is None
