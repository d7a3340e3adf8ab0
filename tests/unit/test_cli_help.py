"""Every sub-command of ``triage-node`` and ``triage-model`` has a sentence, its
options' meanings, defaults and choices in its help."""

from __future__ import annotations

import argparse

import pytest


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _walk(child, (*path, name))


def _parsers():
    from models.cli import build_parser as model_parser
    from triage.cli import build_parser as node_parser

    for prog, parser in (("triage-node", node_parser()), ("triage-model", model_parser())):
        for path, sub in _walk(parser):
            if path == ("mii",):  # its own CLI (models.mii_train), tested below
                continue
            yield (prog, *path), sub


def test_every_subcommand_explains_itself_and_its_options() -> None:
    seen = 0
    for path, parser in _parsers():
        seen += 1
        assert parser.description and parser.description.strip().endswith("."), path
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            assert action.help, (path, action.dest)
            meaningful = action.default not in (None, False) and not action.required
            if meaningful and action.option_strings:
                assert f"(default: {action.default})" in " ".join(text.split()), (
                    path,
                    action.dest,
                )
    assert seen >= 20


def test_choices_are_in_the_help() -> None:
    from models.cli import BACKBONE_NAMES
    from models.cli import build_parser as model_parser
    from triage.cli import build_parser as node_parser

    train = dict(_walk(model_parser()))[("train",)]
    text = " ".join(train.format_help().split())
    for name in BACKBONE_NAMES:
        assert name in text
    worker = dict(_walk(node_parser()))[("worker",)]
    text = " ".join(worker.format_help().split())
    assert "choices: inference, delivery (default: inference,delivery)" in text


def test_backbone_choices_are_the_registered_backbones() -> None:
    pytest.importorskip("torch", reason="the backbone registry needs the train extra")
    from models.backbones import BACKBONES
    from models.cli import BACKBONE_NAMES

    assert list(BACKBONE_NAMES) == list(BACKBONES)
