"""Every `detkit` command's --help ends with examples that work as written.

The cheap ones run (`detkit configs`, `detkit evaluate` on a small COCO json written here); the
others need a trained checkpoint or minutes of work, so their arguments go through the command's
own parser (`--print_config` for the LightningCLI commands: the config resolves and every key parses).
"""

import json
import os
import shlex
import shutil

import pytest
import yaml

from detkit.cli import main
from detkit.cli import predict as predict_cli
from detkit.cli.analyze import build_parser as analyze_parser
from detkit.cli.export import parse_args as export_args
from detkit.cli.proposals import build_parser as proposals_parser

# (arguments before --help) of every help text; predict --config prints LightningCLI's predict help
HELPS = {
    "detkit": [],
    "fit": ["fit"],
    "validate": ["validate"],
    "test": ["test"],
    "predict": ["predict"],
    "predict --config": ["predict", "--config", "shapes_faster_rcnn_tiny"],
    "evaluate": ["evaluate"],
    "analyze": ["analyze"],
    "proposals": ["proposals"],
    "configs": ["configs"],
    "export": ["export"],
}


def examples(text: str) -> list[list[str]]:
    """The commands of the last `examples...:` paragraph of a help text (continuation lines joined,
    `# comments` dropped), each as the argument list after `detkit`."""
    start = text.rfind("\nexamples")
    assert start >= 0, f"no examples part at the end of:\n{text[-500:]}"
    commands, pending = [], ""
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("  "):
            break  # end of the paragraph
        pending += " " + line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        words = shlex.split(pending, comments=True)
        pending = ""
        assert words[0] == "detkit", words
        commands.append(words[1:])
    assert not pending, f"unfinished example: {pending}"
    return commands


def _help(capsys, before: list[str]) -> str:
    assert main([*before, "--help"]) == 0
    return capsys.readouterr().out


def _write_shapes_like_files():
    """data/shapes/val/annotations.json (2 images, 2 classes) and predictions/detections.json as
    `detkit predict --annotations` writes them (the ground truth's image ids), in the working folder."""
    os.makedirs("data/shapes/val/images")
    os.makedirs("predictions")
    gt = {
        "images": [{"id": i, "file_name": f"{i:06d}.png", "width": 128, "height": 128} for i in (1, 2)],
        "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "rectangle"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [50, 20, 30, 60], "area": 1800, "iscrowd": 0},
        ],
    }
    with open("data/shapes/val/annotations.json", "w") as f:
        json.dump(gt, f)
    # one exact hit per image: AP 1.0 for both classes
    detections = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9},
        {"image_id": 2, "category_id": 2, "bbox": [50, 20, 30, 60], "score": 0.8},
    ]
    with open("predictions/detections.json", "w") as f:
        json.dump(detections, f)


def _check(args: list[str], capsys) -> None:
    """Run or parse one example (the working folder is an empty temporary one)."""
    command = args[0]
    if command == "configs":
        target = None
        if ">" in args:
            at = args.index(">")
            args, target = args[:at], args[at + 1]
        assert main(args) == 0
        out = capsys.readouterr().out
        if target is None:
            assert "shapes_faster_rcnn_tiny" in out
            return
        with open(target, "w") as f:
            f.write(out)
        assert yaml.safe_load(out)["model"]["model_name"] == "faster_rcnn_tiny"
        assert main(["fit", "--config", target, "--print_config"]) == 0  # the next step the help names
    elif command == "evaluate":
        _write_shapes_like_files()
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "AP[circle] = 1.000" in out and "AP[rectangle] = 1.000" in out
        for option, name in (("--output", "metrics.json"), ("--pr-curve", "pr.png")):
            if option in args:
                with open(args[args.index(option) + 1], "rb") as f:
                    assert f.read(4)  # written
    elif command in ("fit", "validate", "test") or (command == "predict" and "--config" in args):
        assert main([*args, "--print_config"]) == 0
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["model"]["model_name"] == "faster_rcnn_tiny"
    elif command == "predict":
        parsed, unknown = predict_cli.build_parser().parse_known_args(args[1:])
        assert not unknown and parsed.checkpoint and parsed.input and parsed.output
    elif command == "analyze":
        assert analyze_parser().parse_args(args[1:]).output
    elif command == "proposals":
        assert proposals_parser().parse_args(args[1:]).output
    elif command == "export":
        assert export_args(args[1:]).format in ("onnx", "pt2")
    else:
        raise AssertionError(f"no check for the example `detkit {shlex.join(args)}`")


@pytest.mark.parametrize("name", list(HELPS))
def test_help_ends_with_examples_that_work(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    found = examples(_help(capsys, HELPS[name]))
    assert 1 <= len(found) <= 2, found
    if name != "detkit":
        assert all(args[0] == name.split()[0] for args in found), found  # a command's help shows that command
    for args in found:
        _check(args, capsys)
        for path in tmp_path.iterdir():  # the next example starts in an empty folder
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def test_examples_reader():
    text = "usage: x\n\nexamples (a note):\n  detkit a --b 'c d' \\\n      --e f   # comment\n  detkit g\nafter\n"
    assert examples(text) == [["a", "--b", "c d", "--e", "f"], ["g"]]
    with pytest.raises(AssertionError, match="no examples"):
        examples("usage: x\n")
