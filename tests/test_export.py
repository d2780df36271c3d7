"""`cnnlab export`: ONNX, TorchScript and safetensors files that give the checkpoint's logits."""

import json
import subprocess
import sys

import pytest
import torch

from cnnlab.analysis.profile import count_params
from cnnlab.data.augment import to_model_input
from cnnlab.data.sources import load_split
from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.inference.export import TOLERANCE
from cnnlab.run.saved_model import load_trained_model
from tests.helpers import FASHION, SMALL, cli, needs_fashion

pytestmark = needs_fashion

REFERENCE = ["reference.value=8.0", "reference.source=a test", "reference.protocol=one seed",
             "reference.row=tiny row"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 1-epoch narrow preact-ResNet-20 on 768 Fashion-MNIST images, naming a reference."""
    out = tmp_path_factory.mktemp("export") / "run"
    args = [a for a in SMALL if not a.startswith("train.epochs")]
    assert cli("train", "--out", str(out), "train.epochs=1", *REFERENCE, *args) == 0
    return out


@pytest.fixture(scope="module")
def images():
    """Seven real test images, normalised as the run's input, and the checkpoint's logits."""
    test = load_split("fashion_mnist", "test", str(FASHION), download=False)
    mean, inv_std = torch.tensor([0.2860]), 1 / torch.tensor([0.3530])
    return to_model_input(test.images[:7], mean, inv_std, torch.float32).contiguous()


def _reference_logits(run, x):
    trained = load_trained_model(run / "last.pt", "cpu")
    with torch.no_grad():
        return trained.model(x)


def _close(got, want, fmt):
    scale = max(1.0, want.abs().max().item())
    assert (got - want).abs().max().item() / scale <= TOLERANCE[fmt]


def test_onnx_runs_in_onnxruntime_with_any_batch_size(run, images, capsys):
    import onnxruntime

    out = run / "model.onnx"
    capsys.readouterr()
    assert cli("export", str(run / "last.pt"), "--format", "onnx", "--out", str(out)) == 0
    assert "largest relative logit difference" in capsys.readouterr().out
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    batch_dim = session.get_inputs()[0].shape[0]
    assert isinstance(batch_dim, str)  # symbolic: the batch size is dynamic
    want = _reference_logits(run, images)
    for n in (1, 7):
        got = torch.from_numpy(session.run(None, {"images": images[:n].numpy()})[0])
        _close(got, want[:n], "onnx")


def test_torchscript_reloads_without_cnnlab(run, images, tmp_path):
    out = run / "last.torchscript.pt"
    assert cli("export", str(run / "last.pt"), "--format", "torchscript") == 0
    torch.save(images, tmp_path / "x.pt")
    # A fresh interpreter in which `import cnnlab` fails: the file must stand on its own.
    code = (
        "import sys, torch; sys.modules['cnnlab'] = None; "
        f"m = torch.jit.load({str(out)!r}); x = torch.load({str(tmp_path / 'x.pt')!r}); "
        f"torch.save(m(x), {str(tmp_path / 'y.pt')!r})"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    _close(torch.load(tmp_path / "y.pt"), _reference_logits(run, images), "torchscript")


def test_safetensors_hold_exactly_the_checkpoint_weights(run, images):
    from safetensors import safe_open
    from safetensors.torch import load_file

    out = run / "last.safetensors"
    assert cli("export", str(run / "last.pt"), "--format", "safetensors") == 0
    weights = load_file(str(out))
    saved = load_checkpoint(run / "last.pt")["model"]
    assert weights.keys() == saved.keys()
    assert all(torch.equal(weights[k], saved[k]) for k in saved)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["cnnlab_model"] == "preact_resnet20"
    assert json.loads(meta["classes"])[0] == "T-shirt/top"


def test_every_export_writes_a_model_card(run):
    out = run / "card-check.safetensors"
    assert cli("export", str(run / "last.pt"), "--format", "safetensors", "--out", str(out)) == 0
    card = json.loads((run / "card-check.safetensors.card.json").read_text())
    trained = load_trained_model(run / "last.pt", "cpu")
    assert card["model"]["name"] == "preact_resnet20"
    assert card["model"]["options"] == {"base_width": 8}
    assert card["model"]["params"] == count_params(trained.model)
    assert card["model"]["flops_per_image"] > 0
    assert card["input"]["shape"] == ["batch", 1, 28, 28]
    assert card["input"]["mean"] == [0.286] and card["input"]["std"] == [0.353]
    assert card["classes"][-1] == "Ankle boot" and len(card["classes"]) == 10
    last = load_checkpoint(run / "last.pt")["history"][-1]
    assert card["metrics"]["test_error"] == last["test_error"]
    assert "first 400 test images" in card["protocol"]
    assert card["reference"]["row"] == "tiny row"
    assert card["export"]["tolerance"] == 0.0
    md = (run / "card-check.safetensors.card.md").read_text()
    assert "tiny row" in md and "| test_error |" in md


def test_bad_requests_are_one_line_errors(run, tmp_path, capsys, monkeypatch):
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    cases = [
        ((str(run / "last.pt"), "--format", "tflite"), "unknown export format 'tflite'"),
        ((str(tmp_path / "foreign.pt"), "--format", "onnx"), "is not a cnnlab checkpoint"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert cli("export", *args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    # A missing optional package names the extra to install.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert cli("export", str(run / "last.pt"), "--format", "onnx") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cnnlab[export]" in err[0] and "onnxruntime" in err[0]


def test_a_model_the_exporter_cannot_handle_says_so_in_one_line(run, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("Tracer cannot infer type of output\nmore detail")

    monkeypatch.setattr(torch.jit, "trace", refuse)
    capsys.readouterr()
    assert cli("export", str(run / "last.pt"), "--format", "torchscript") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "cnnlab: error: preact_resnet20 cannot be exported to torchscript: "
        "RuntimeError: Tracer cannot infer type of output"
    ]


def test_a_run_folder_exports_its_last_checkpoint(run):
    assert cli("export", str(run), "--format", "safetensors") == 0
    assert (run / "last.safetensors").is_file() and (run / "last.safetensors.card.json").is_file()
