"""Dead units' signatures (workbench.alignment.dead): their similarity from matrix products
agrees with the direct differences, and equal weights give exactly 1."""

from __future__ import annotations

import torch

from workbench.alignment.dead import signature_similarity


def _direct(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    distance = (rows[:, None, :] - columns[None, :, :]).norm(dim=2)
    norms = rows.norm(dim=1)[:, None] + columns.norm(dim=1)[None, :]
    return 1.0 - distance / norms


def test_similarity_matches_the_direct_differences_and_twins_give_exactly_one() -> None:
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(7, 3000, generator=generator, dtype=torch.float64).sort(dim=1).values
    columns = rows[[3, 0, 6, 1, 5, 2, 4]].clone()
    columns[1] += 1e-3 * torch.randn(3000, generator=generator, dtype=torch.float64)
    found = signature_similarity(rows, columns)
    torch.testing.assert_close(found, _direct(rows, columns), rtol=0, atol=1e-12)
    for column, row in enumerate([3, 0, 6, 1, 5, 2, 4]):
        if column != 1:
            assert found[row, column].item() == 1.0  # exactly: twins are measured directly
    assert 0.99 < found[0, 1].item() < 1.0


def test_many_equal_signatures_are_all_exactly_one() -> None:
    rows = torch.full((90, 500), 0.25, dtype=torch.float64)  # more near pairs than a chunk
    assert torch.equal(signature_similarity(rows, rows.clone()), torch.ones(90, 90))
