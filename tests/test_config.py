"""lacoot.config: each option declared once; checks, reading, writing and flags derive from it."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

import pytest
import yaml

from lacoot.cli import add_options, build_parser
from lacoot.config import (
    DEFAULT_TARGET_MACS,
    CollapseConfig,
    RunConfig,
    TrainConfig,
    option,
    option_spec,
)
from lacoot.criteria import Criterion


def test_every_option_has_help_and_the_run_and_train_commands_take_each_one() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {name: {a.dest for a in p._actions} for name, p in sub.choices.items()}
    collapse = {f.name for f in fields(CollapseConfig)}
    for f in fields(RunConfig):
        assert option_spec(f).help, f.name
        assert f.name in flags["run"], f.name
        assert (f.name in flags["train"]) == (f.name not in collapse), f.name
    assert collapse <= flags["collapse"]


def test_help_lists_the_names_of_the_registries(capsys, monkeypatch) -> None:
    from lacoot import criteria

    monkeypatch.setitem(criteria._CRITERIA, "test_config_first_block", Criterion(
        "test_config_first_block", "first block first",
        static_score=lambda blocks, seed: {b.name: float(b.order) for b in blocks}))  # fmt: skip
    with pytest.raises(SystemExit):
        build_parser().parse_args(["collapse", "--help"])
    help_text = capsys.readouterr().out.replace("\n", " ")
    assert "test_config_first_block" in help_text and "greedy" in help_text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "resnet20" in help_text and "fashion-mnist, mnist" in help_text


def test_a_new_option_is_one_field() -> None:
    @dataclass
    class Extended(TrainConfig):
        warmup_lam: float = option(0.0, "epochs of lambda warm-up", check=lambda v: v >= 0,
                                   expect=">= 0")  # fmt: skip

    parser = argparse.ArgumentParser()
    add_options(parser, Extended)
    args = parser.parse_args(["--warmup-lam", "2", "--no-nesterov", "--penalize", "a", "b"])
    assert (args.warmup_lam, args.nesterov, args.penalize) == (2.0, False, ["a", "b"])
    cfg = Extended.from_dict({k: v for k, v in vars(args).items() if v is not None})
    assert cfg.warmup_lam == 2.0 and cfg.penalize == ("a", "b") and cfg.target_macs is None
    with pytest.raises(ValueError, match="warmup_lam=-1; expected >= 0"):
        Extended(warmup_lam=-1)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"epochs": "many"}, "option epochs='many' has type str; expected int"),
        ({"epochs": 0}, "epochs=0; expected an integer > 0"),
        ({"lam": float("inf")}, "lam=inf; expected lam >= 0"),
        ({"milestones": [1, "x"]}, "option milestones=.* has type"),
        ({"schedule": "step"}, "schedule='step'; expected 'multistep', 'cosine', 'onecycle' or"),
        ({"model": "resnet9"}, "unknown model 'resnet9'; valid names: "),
        ({"compare": ["cosine", "x"]}, r"unknown criterion 'x' \(compare='x'\); valid names"),
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'; valid names"),
        ({"repair": "prune"}, "repair='prune'; expected 'none', 'bn'"),
        ({"latency_batch_sizes": [1, 0]}, "latency_batch_sizes=.*expected batch sizes >= 1"),
        ({"target_blocks": 2, "target_macs": 0.5}, "at most one budget"),
        ({"lamda": 1}, r"unknown options \['lamda'\]"),
    ],
)
def test_bad_values_name_the_option_and_what_was_expected(values, message) -> None:
    with pytest.raises(ValueError, match=message):
        RunConfig.from_dict(values)


def test_values_round_trip_through_yaml_and_split_into_train_and_collapse_options() -> None:
    cfg = RunConfig.from_dict({"dataset": "fmnist", "milestones": [2, 3], "compare": ["msw"],
                               "lam": 2, "blocks": 3})  # fmt: skip
    assert cfg.milestones == (2, 3) and cfg.compare == ("msw",)
    again = RunConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg and again.to_dict()["milestones"] == [2, 3]
    train, collapse = cfg.train_config(), cfg.collapse_config()
    assert type(train) is TrainConfig and train.lam == 2 and train.milestones == (2, 3)
    assert type(collapse) is CollapseConfig and collapse.blocks == 3
    assert collapse.or_default_budget() is collapse
    assert CollapseConfig().or_default_budget().max_drop == 1.0


def test_the_default_budget_yields_to_named_or_counted_blocks() -> None:
    assert TrainConfig().target_macs == DEFAULT_TARGET_MACS and TrainConfig().targeted
    assert TrainConfig(penalize=("layer1.*",)).target_macs is None
    assert TrainConfig(target_blocks=2).target_macs is None
    assert not TrainConfig(target_macs=1.0).targeted


def test_escalate_help_states_the_weight_cap() -> None:
    from dataclasses import fields

    from lacoot.config import TrainConfig, option_spec
    from lacoot.regularizer import MAX_WEIGHT

    (escalate,) = [f for f in fields(TrainConfig) if f.name == "escalate"]
    assert f"at most {MAX_WEIGHT:g} (regularizer.MAX_WEIGHT)" in option_spec(escalate).help


def test_library_defaults_are_the_commands_defaults() -> None:
    """One source for each default: the library functions take the CLI's declarations."""
    import inspect

    from lacoot.collapse import sweep
    from lacoot.config import CollapseConfig, TrainConfig
    from lacoot.criteria import score_blocks
    from lacoot.regularizer import MSWRegularizer
    from lacoot.repair import linear_patch, recalibrate_bn, repair

    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    c, t = CollapseConfig(), TrainConfig()
    assert default(MSWRegularizer, "method") == t.method == "random"
    assert default(MSWRegularizer, "n_projections") == t.n_projections
    assert default(score_blocks, "criterion") == c.criterion
    assert default(score_blocks, "repair") == c.repair
    assert default(sweep, "latency_batch_sizes") == c.latency_batch_sizes == (1, 128)
    assert default(sweep, "repair") == c.repair
    for fn in (repair, linear_patch, recalibrate_bn):
        assert default(fn, "n_samples") == c.calib_samples


def test_lam_zero_is_vanilla_and_records_no_budget_or_fade() -> None:
    from lacoot.config import TrainConfig

    plain = TrainConfig(lam=0.0)
    assert plain.target_macs is None and plain.fade == 0.0 and not plain.aimed
    assert TrainConfig(lam=0.0, target_macs=1.0).target_macs == 1.0  # "no budget" said outright
    for aim in ({"target_macs": 0.5}, {"target_blocks": 2}, {"penalize": ("layer1.*",)},
                {"penalize": ("layer1.*",), "fade": 0.3}):  # fmt: skip
        with pytest.raises(ValueError, match=r"lam=0 trains without the penalty \(vanilla\), but "):
            TrainConfig(lam=0.0, **aim)
    with pytest.raises(ValueError, match=r"but target_macs=0.5 aim"):  # the default fade unnamed
        TrainConfig(lam=0.0, target_macs=0.5)


def test_experimental_options_are_accepted_but_out_of_help() -> None:
    from lacoot.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "--stop-input-grad", "--penalty-every", "4"])
    assert args.stop_input_grad is True and args.penalty_every == 4
    train = next(a for a in parser._actions if a.dest == "command").choices["train"]
    shown = train.format_help()
    for flag in ("--stop-input-grad", "--penalty-every", "--escalate", "--lam-warmup"):
        assert flag not in shown
    assert "--target-warmup" in shown and "--fade" in shown
