"""Block discovery and removal on CIFAR ResNets, a transformer encoder and a residual MLP."""

from __future__ import annotations

import pytest
import torch
from _nets import (
    EncoderClassifier,
    IndexedBlocks,
    InPlaceUnit,
    MaskedNet,
    ParallelScales,
    ResidualUnit,
    residual_mlp,
)
from torch import nn

import lacoot
from lacoot.blocks import (
    BlockDiscoveryError,
    CollapsedBlock,
    CollapseError,
    _outputs,
    deleted_from,
    find_blocks,
    identity_blocks,
    rebuild_removed,
    remove_blocks,
)
from lacoot.models import create


def _cases():
    return {
        "resnet18-cifar": (
            lambda: create("resnet18", num_classes=10, stem="cifar"),
            torch.randn(2, 3, 32, 32),
            ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"],
        ),
        "resnet20": (
            lambda: create("resnet20", num_classes=10),
            torch.randn(2, 3, 32, 32),
            ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"],
        ),
        "transformer-encoder": (
            EncoderClassifier,
            torch.randn(2, 7, 8),
            [f"encoder.layers.{i}" for i in range(4)],
        ),
        "residual-mlp": (residual_mlp, torch.randn(4, 6), ["1", "2", "3", "4"]),
    }


CASES = _cases()


@pytest.mark.parametrize("case", list(CASES))
def test_default_blocks(case: str) -> None:
    build, x, expected = CASES[case]
    torch.manual_seed(0)
    model = build()
    blocks = find_blocks(model, x)
    assert [b.name for b in blocks] == expected
    for b in blocks:
        assert b.params == sum(p.numel() for p in model.get_submodule(b.name).parameters())
        assert b.macs > 0
    assert [b.order for b in blocks] == sorted(b.order for b in blocks)


@pytest.mark.parametrize("case", list(CASES))
def test_removed_model_equals_identity_model(case: str) -> None:
    build, x, _ = CASES[case]
    torch.manual_seed(0)
    model = build().eval()
    before = model(x)
    names = [b.name for b in find_blocks(model, x)][1::2]
    removed = remove_blocks(model, names).eval()
    replaced = identity_blocks(model, names).eval()
    out = removed(x)
    assert out.shape == before.shape
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, replaced(x), rtol=0, atol=0)
    # the original is untouched
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    assert lacoot.count_params(removed) < lacoot.count_params(model)
    state = removed.state_dict()
    assert len(state) < len(model.state_dict())


def test_state_dict_loses_removed_weights() -> None:
    model = residual_mlp()
    removed = remove_blocks(model, ["2"])
    # Sequential renumbers: 4 units become 3, the head shifts from index 5 to 4.
    assert [k for k in removed.state_dict() if k.endswith("fc1.weight")] == [
        "1.fc1.weight",
        "2.fc1.weight",
        "3.fc1.weight",
    ]
    expected = lacoot.count_params(model) - sum(p.numel() for p in model[2].parameters())
    assert lacoot.count_params(removed) == expected


def test_non_container_block_becomes_identity() -> None:
    model = create("resnet18", num_classes=10, stem="cifar")
    removed = remove_blocks(model, ["layer4.1"])
    assert isinstance(removed.layer4, nn.Sequential) and len(removed.layer4) == 1
    enc = EncoderClassifier()
    # a ModuleList's forward is the user's code: deleting from it is checked on an example input
    r = remove_blocks(enc, ["encoder.layers.0"], torch.randn(2, 5, 8))
    assert len(r.encoder.layers) == 3


def test_collapsed_block_passes_its_tensor_and_kwargs() -> None:
    x, mask = torch.randn(2, 3), torch.ones(2, 3)
    assert CollapsedBlock()(x, src_mask=None, is_causal=False) is x
    assert CollapsedBlock()(x, mask) is x  # the first tensor flows, the rest is ignored
    assert CollapsedBlock(flow="h")(mask, h=x) is x  # or the one the block declared
    with pytest.raises(TypeError, match="passes a tensor argument through; it was given none"):
        CollapsedBlock()(None, scale=2.0)


def test_include_exclude_patterns() -> None:
    model = create("resnet18", num_classes=10, stem="cifar")
    x = torch.randn(2, 3, 32, 32)
    names = [b.name for b in find_blocks(model, x, include="layer*.1")]
    assert names == ["layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    assert [b.name for b in find_blocks(model, x, include="layer1.**.bn2")] == [
        "layer1.0.bn2",
        "layer1.1.bn2",
    ]
    names = [b.name for b in find_blocks(model, x, exclude=["layer1.*"])]
    assert names == ["layer2.1", "layer3.1", "layer4.1"]
    # include may pick single layers too
    names = [b.name for b in find_blocks(model, x, include="layer1.0.bn*")]
    assert names == ["layer1.0.bn1", "layer1.0.bn2"]
    with pytest.raises(BlockDiscoveryError, match="layer2.0"):
        find_blocks(model, x, include="layer2.0")
    with pytest.raises(BlockDiscoveryError, match="nested"):
        find_blocks(model, x, include=["layer1.0", "layer1.0.bn1"])


class Declares(nn.Module):
    def __init__(self, declared: list[str]) -> None:
        super().__init__()
        self.body = residual_mlp()
        self.declared = declared

    def lacoot_blocks(self) -> list[str]:
        return self.declared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_model_declares_its_blocks() -> None:
    x = torch.randn(4, 6)
    model = Declares(["body.1.fc1", "body.3"])
    assert [b.name for b in find_blocks(model, x)] == ["body.1.fc1", "body.3"]
    assert [b.name for b in find_blocks(model, x, use_declared=False)] == [
        f"body.{i}" for i in range(1, 5)
    ]
    with pytest.raises(BlockDiscoveryError, match="body.0.*changes shape"):
        find_blocks(Declares(["body.0"]), x)
    with pytest.raises(BlockDiscoveryError, match="not a sub-module"):
        find_blocks(Declares(["body.nope"]), x)


class SharedTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.unit = ResidualUnit(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.unit(self.unit(x)))


class TupleBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + self.fc(x), x


class ReturnsTuple(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = TupleBlock()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.inner(x)[0])


def test_a_block_returning_a_tuple_flows_its_first_element() -> None:
    """Transformer layers returning ``(hidden, extra)`` are blocks; removed, they return
    ``(x, None)``, and the model computes what it computes with the block made identity."""
    torch.manual_seed(0)
    model = ReturnsTuple()
    x = torch.randn(3, 4)
    assert [b.name for b in find_blocks(model, x)] == ["inner"]
    shallow = remove_blocks(model, ["inner"], x)
    assert shallow.inner(x)[0] is x and shallow.inner(x)[1] is None
    torch.testing.assert_close(shallow(x), model.head(x))


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)), "changes shape"),
        (SharedTwice(), "called 2 times"),
    ],
)
def test_no_collapsible_block_is_explained(model: nn.Module, reason: str) -> None:
    with pytest.raises(BlockDiscoveryError, match=reason):
        find_blocks(model, torch.randn(3, 4))


def test_trace_restores_training_mode_and_leaves_no_hooks() -> None:
    model = create("resnet20", num_classes=10).train()
    find_blocks(model, torch.randn(2, 3, 32, 32))
    assert model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_remove_blocks_rejects_bad_names() -> None:
    model = residual_mlp()
    with pytest.raises(ValueError, match="'9' is not a sub-module"):
        remove_blocks(model, ["9"])
    with pytest.raises(ValueError, match="repeat"):
        remove_blocks(model, ["1", "1"])
    with pytest.raises(ValueError, match="nested"):
        remove_blocks(model, ["1", "1.fc1"])


# ------------------------------------------- collapse computes what identity does, on any model
def _same_function(a: nn.Module, b: nn.Module, *x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.allclose(a.eval()(*x), b.eval()(*x), atol=1e-6)


@pytest.mark.parametrize("net", [ParallelScales, IndexedBlocks])
def test_deleting_from_a_module_list_never_changes_the_function(net) -> None:
    torch.manual_seed(0)
    model, x = net(), torch.randn(5, 6)
    reference = identity_blocks(model, ["blocks.1"])
    for example in (x, None):  # checked on an example, or identity without one
        collapsed = remove_blocks(model, ["blocks.1"], example)
        assert _same_function(collapsed, reference, x)
        assert isinstance(collapsed.blocks[1], CollapsedBlock)
        assert "blocks.1.fc1.weight" not in collapsed.state_dict()
        assert deleted_from(collapsed, ["blocks.1"]) == []
        rebuilt = rebuild_removed(model, ["blocks.1"], [])
        rebuilt.load_state_dict(collapsed.state_dict())
    plain = nn.Sequential(*[ResidualUnit(6) for _ in range(3)])  # a chain: deleted
    assert len(remove_blocks(plain, ["1"], x)) == 2 == len(remove_blocks(plain, ["1"]))
    assert deleted_from(remove_blocks(plain, ["1"], x), ["1"]) == [""]


def test_transformer_encoder_collapses_by_deletion_or_says_which_container_cannot() -> None:
    torch.manual_seed(0)
    enc, x = EncoderClassifier(layers=2), torch.randn(2, 5, 8)
    one = remove_blocks(enc, ["encoder.layers.0"], x)
    assert len(one.encoder.layers) == 1
    skipped = _outputs(enc, x, identity=["encoder.layers.0"])  # the layer bypassed by a hook
    assert torch.allclose(one.eval()(x), skipped, atol=1e-6)
    with pytest.raises(AttributeError, match=r"removed block 'encoder.layers.0'.*'encoder.layers'"):
        identity_blocks(enc, ["encoder.layers.0"]).eval()(x)  # torch reads its first layer
    with pytest.raises(CollapseError, match="'encoder.layers'"):
        remove_blocks(enc, ["encoder.layers.0", "encoder.layers.1"], x)
    blocks = find_blocks(enc, x)
    scores = {b.name: float(i) for i, b in enumerate(blocks)}
    labels = torch.zeros(2, dtype=torch.long)
    result = lacoot.sweep(enc, blocks, scores, [(x, labels)], latency_batch_sizes=(), repair="none")
    assert [p.k for p in result.points] == [0, 1] and "stopped at k=1" in result.stopped


@pytest.mark.parametrize("mask_first", [False, True])
def test_blocks_with_a_mask_are_found_regularised_on_the_flowing_tensor_and_collapse(
    mask_first: bool,
) -> None:
    torch.manual_seed(0)
    model = MaskedNet(mask_first=mask_first)
    x, mask = torch.randn(8, 6), (torch.rand(8, 6) > 0.5).float()
    blocks = find_blocks(model, (x, mask))
    assert [b.name for b in blocks] == ["first", "rest.a", "rest.b"]
    with lacoot.MSWRegularizer(model, blocks, method="random", seed=0) as reg:
        model(x, mask)
        assert reg._captured["first"][0] is x  # the flowing tensor, not the mask
        assert reg.penalty() > 0
    collapsed = remove_blocks(model, ["rest.a"], (x, mask))
    assert _same_function(collapsed, identity_blocks(model, ["rest.a"]), x, mask)
    assert isinstance(collapsed.rest["a"], CollapsedBlock)


def test_in_place_blocks_are_detected_and_measured_on_their_true_input() -> None:
    class OutOfPlace(nn.Module):
        def __init__(self, fc: nn.Linear) -> None:
            super().__init__()
            self.fc = fc

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.fc(x)

    torch.manual_seed(0)
    inplace = nn.Sequential(nn.Linear(6, 6), InPlaceUnit(6), InPlaceUnit(6))
    twin = nn.Sequential(inplace[0], OutOfPlace(inplace[1].fc), OutOfPlace(inplace[2].fc))
    x = torch.randn(32, 6)
    blocks = find_blocks(inplace, x)
    assert [b.inplace for b in blocks] == [True, True]
    loader = [(x, torch.zeros(32, dtype=torch.long))]
    for criterion in ("msw", "cosine"):
        got = lacoot.score_blocks(inplace, blocks, loader, criterion=criterion)
        want = lacoot.score_blocks(twin, find_blocks(twin, x), loader, criterion=criterion)
        assert min(got.values()) > 0
        assert got == pytest.approx(want, rel=1e-5)
    with lacoot.MSWRegularizer(inplace, blocks, method="random", seed=0) as reg:
        inplace(x.clone())
        got = reg.penalty()
    with lacoot.MSWRegularizer(twin, blocks, method="random", seed=0) as reg:
        twin(x.clone())
        torch.testing.assert_close(got, reg.penalty())
    with lacoot.MSWRegularizer(inplace, [b.name for b in blocks]):  # names: no record, an error
        with pytest.raises(RuntimeError, match="modified its input in place"):
            inplace(x.clone())


def test_a_layer_shared_by_two_blocks_is_not_counted_as_removable() -> None:
    model = residual_mlp(units=3)
    model[2].fc1 = model[1].fc1  # tied
    blocks = {b.name: b for b in find_blocks(model, torch.randn(2, 6))}
    fc = 16 * 16 + 16
    assert blocks["1"].params == blocks["2"].params == fc  # only the untied fc2
    assert blocks["3"].params == 2 * fc
