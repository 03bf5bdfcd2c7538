"""Gradients that are the loss's derivative, not merely present: a parameter whose grad is not None
(or not all zero) can still miss a path that a stray detach cut. Central finite differences in
float64 along a random direction check the whole derivative."""

import copy

import torch


def assert_gradients_are_derivatives(
    model: torch.nn.Module, loss_of, names, step: float = 1e-5, seed: int = 0, rtol: float = 1e-6
) -> None:
    """For each parameter in ``names``: <grad, d> from autograd equals (L(p + d) - L(p - d)) / 2 within ``rtol``
    for a random direction d of norm step * max(|p|, 1), in float64 and eval mode (no drop-path noise), and is not zero.
    loss_of(model) -> scalar loss; it must cast its floating inputs to the model's dtype."""
    model = copy.deepcopy(model).double().eval()
    named = dict(model.named_parameters())
    model.zero_grad(set_to_none=True)
    loss_of(model).backward()
    g = torch.Generator().manual_seed(seed)
    for name in names:
        p = named[name]
        d = torch.randn(p.shape, generator=g, dtype=p.dtype)
        d *= step * max(p.norm().item(), 1.0) / d.norm()  # a step relative to the tensor's size
        analytic = (p.grad * d).sum().item()
        with torch.no_grad():
            p.add_(d)
            up = loss_of(model).item()
            p.sub_(2 * d)
            down = loss_of(model).item()
            p.add_(d)
        numeric = (up - down) / 2
        assert analytic != 0.0, f"{name}: zero gradient"
        # the default rtol: 1.3e-7 relative measured on the tiny models (float64, a step of 1e-5 of the norm)
        assert abs(numeric - analytic) <= rtol * abs(analytic), (name, numeric, analytic)
