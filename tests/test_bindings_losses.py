"""gaccore.bindings.losses: the CHORD SFT loss, mix(), and the README loop."""

from __future__ import annotations

import math
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from gaccore.bindings.losses import mix, sft_loss  # noqa: E402

SNIPPETS = Path(__file__).resolve().parent.parent / "docs" / "snippets"


def test_phi_weighting_matches_the_formula_and_is_detached() -> None:
    logp = torch.log(torch.tensor([[0.5, 0.9, 0.2], [0.1, 0.7, 0.3]], dtype=torch.float64)).requires_grad_()
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    loss = sft_loss(logp, mask)
    tokens = [(0, 0), (0, 1), (1, 0)]
    expected = (
        -sum(math.exp(logp[i, j].item()) * (1 - math.exp(logp[i, j].item())) * logp[i, j].item() for i, j in tokens) / 3
    )
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    # phi is a constant weight: d loss / d logp = -phi(p) / n on masked-in tokens, 0 elsewhere.
    p = logp.detach().exp()
    expected_grad = torch.where(mask != 0, -p * (1 - p) / 3, torch.zeros_like(p))
    torch.testing.assert_close(logp.grad, expected_grad)


def test_nll_is_the_plain_token_mean() -> None:
    logp = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])
    mask = torch.tensor([[True, True], [True, False]])
    assert sft_loss(logp, mask, sft_coef="nll").item() == pytest.approx(2.0)


def test_padding_may_hold_nan_and_inf_without_touching_loss_or_grad() -> None:
    logp = torch.tensor([[-0.5, float("nan")], [float("-inf"), -1.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = sft_loss(logp, mask)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logp.grad).all()
    assert logp.grad[0, 1] == 0 and logp.grad[1, 0] == 0


def test_positive_logp_is_clamped_and_empty_mask_gives_zero() -> None:
    assert sft_loss(torch.tensor([[1e-3]]), torch.tensor([[1]]), sft_coef="nll").item() == 0.0
    empty = sft_loss(torch.zeros(2, 3, requires_grad=True), torch.zeros(2, 3))
    assert empty.item() == 0.0 and empty.requires_grad


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((torch.zeros(2, 3), torch.ones(2, 3)), {"sft_coef": "chord"}, ValueError, "sft_coef"),
        ((torch.zeros(3), torch.ones(3)), {}, ValueError, r"logp must have shape \[B, T\]"),
        ((torch.zeros(2, 3), torch.ones(2, 4)), {}, ValueError, "mask must have the shape"),
        ((torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3)), {}, TypeError, "logp"),
        ((torch.zeros(2, 3), [[1, 1, 1]] * 2), {}, TypeError, "mask"),
    ],
)
def test_sft_loss_rejects_bad_input_naming_the_argument(args, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        sft_loss(*args, **kwargs)


def test_mix_weights_and_blocks_gradient_through_mu() -> None:
    sft = torch.tensor(2.0, requires_grad=True)
    rl = torch.tensor(10.0, requires_grad=True)
    mu = torch.tensor(0.25, requires_grad=True)
    out = mix(sft, rl, mu)
    assert out.item() == pytest.approx(0.25 * 2 + 0.75 * 10)
    out.backward()
    assert sft.grad.item() == pytest.approx(0.25) and rl.grad.item() == pytest.approx(0.75)
    assert mu.grad is None
    assert mix(sft, rl, 1.0).item() == pytest.approx(2.0)


@pytest.mark.parametrize("mu", [1.5, -0.1, float("nan"), True, "0.5", torch.ones(2)])
def test_mix_rejects_bad_mu(mu) -> None:
    with pytest.raises(ValueError, match="mu"):
        mix(torch.tensor(1.0), torch.tensor(2.0), mu)


def test_mix_rejects_unreduced_losses() -> None:
    with pytest.raises(ValueError, match="loss_rl"):
        mix(torch.tensor(1.0), torch.ones(3), 0.5)


def test_readme_torch_loop_runs(capsys: pytest.CaptureFixture[str]) -> None:
    namespace = runpy.run_path(str(SNIPPETS / "torch_loop.py"), run_name="__main__")
    ctrl = namespace["ctrl"]
    assert ctrl.step_count == 30
    assert ctrl.metrics()["estimate"] == ctrl.metrics()["estimate"]  # the estimate became defined
    assert 0.05 <= ctrl.mu <= 0.9
    assert "mu=" in capsys.readouterr().out


def test_core_and_bindings_package_import_no_trainer_library() -> None:
    code = (
        "import sys, numpy as np, gaccore, gaccore.bindings\n"
        "gaccore.Controller().update(np.array([[-1.0, -2.0]]), np.array([[1, 1]]), np.array([0.5]))\n"
        "heavy = sorted({'torch', 'trl', 'transformers', 'verl'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
