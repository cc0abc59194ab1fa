"""One source of defaults: every command-line option that sets a config field takes its default, type,
choices and help from that field, so a default is written once, in the dataclass.

An option whose name is a field of the config its command builds must have been made from the field
(`_add_config_options` in minids/__main__.py marks those). Writing `add_argument("--steps",
default=80)` by hand, even with the field's value, fails here.
"""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from minids.__main__ import build_parser
from minids.config import MTPConfig
from minids.grpo_trainer import GRPOConfig
from minids.train import TrainConfig

# The config dataclass each command builds from its options; None: the command builds none.
COMMAND_CONFIGS = {
    "train": TrainConfig,
    "generate": None,
    "grpo": GRPOConfig,
    "distill": TrainConfig,
    "cost": None,
}
# Further config dataclasses a command builds from prefixed options (`--mtp-depth` for `depth`).
MORE_CONFIGS = {"train": (MTPConfig,)}
# Enough to parse each command: its required options.
REQUIRED = {
    "train": [],
    "generate": ["--ckpt", "c", "--prompt", "1+1="],
    "grpo": ["--ckpt", "c"],
    "distill": ["--teacher", "c"],
    "cost": [],
}


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def fields_of(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def test_every_command_says_which_config_it_builds():
    assert set(subparsers()) == set(COMMAND_CONFIGS) == set(REQUIRED)


@pytest.mark.parametrize("command", sorted(COMMAND_CONFIGS))
def test_options_for_config_fields_are_made_from_the_fields(command):
    cls = COMMAND_CONFIGS[command]
    fields = fields_of(cls) if cls else {}
    made = 0
    for action in subparsers()[command]._actions:
        flag = "/".join(action.option_strings)
        tag = getattr(action, "config_field", None)
        if action.dest in fields:
            assert tag == (cls, action.dest), (
                f"{command} {flag} sets {cls.__name__}.{action.dest} but was not made from the "
                f"field: add it with _add_config_options so its default is written once"
            )
        if tag is None:
            continue
        made += 1
        owner, name = tag
        assert owner is cls or owner in MORE_CONFIGS.get(command, ()), (
            f"{command} {flag} comes from {owner.__name__}, the command builds {cls}"
        )
        field = fields_of(owner)[name]
        assert action.help and field.metadata["help"] in action.help, f"{command} {flag}: help"
        if action.default is argparse.SUPPRESS:  # derived: the command fills it in from elsewhere
            assert "(default: " in action.help, (
                f"{command} {flag}: say where the default comes from"
            )
        else:
            assert action.default == field.default, (
                f"{command} {flag} defaults to {action.default!r}, "
                f"{owner.__name__}.{name} to {field.default!r}"
            )
            assert type(action.default) is type(field.default), f"{command} {flag}: type"
        if "choices" in field.metadata:
            assert tuple(action.choices) == tuple(field.metadata["choices"]), f"{command} {flag}"
    assert made == 0 if cls is None else made > 0


@pytest.mark.parametrize("command", ["train", "grpo", "distill"])
def test_parsing_no_option_gives_the_fields_defaults(command):
    cls = COMMAND_CONFIGS[command]
    args = vars(build_parser().parse_args([command, *REQUIRED[command]]))
    for name, field in fields_of(cls).items():
        if name in args:
            assert args[name] == field.default, f"{command} --{name}: {args[name]!r}"


def test_derived_options_are_filled_in_by_their_command():
    # train: --steps and friends come from the preset's recipe, so an omitted one is absent.
    train = vars(build_parser().parse_args(["train"]))
    assert {"steps", "batch_size", "lr", "eval_every"}.isdisjoint(train) and train["seed"] == 0
    # grpo: --epsilon-high follows --epsilon-low unless given.
    grpo = vars(build_parser().parse_args(["grpo", "--ckpt", "c", "--epsilon-low", "0.1"]))
    assert "epsilon_high" not in grpo and grpo["epsilon_low"] == 0.1


def test_the_format_weight_defaults_to_the_configs():
    grpo = subparsers()["grpo"]
    (action,) = [a for a in grpo._actions if a.dest == "format_weight"]
    weights = dict(zip(GRPOConfig().rewards, GRPOConfig().reward_weights, strict=True))
    assert action.default == weights["format"]


def test_every_config_field_has_help():
    for cls in (TrainConfig, GRPOConfig, MTPConfig):
        for name, field in fields_of(cls).items():
            assert field.metadata.get("help"), f"{cls.__name__}.{name} has no metadata['help']"
