"""Security: configs and models are data, and outputs stay inside the output folder.

* the package source never evaluates text (``eval``/``exec``), never unpickles (``pickle``,
  ``yaml.load``, ``torch.load`` without ``weights_only=True``, ``numpy.load(allow_pickle=True)``),
  never runs a shell, and reaches MONAI's expression-evaluating ``ConfigParser`` only behind
  ``--trust-bundle`` (a bundle that would run code is tested in ``test_bad_input_table.py``);
* a medgen bundle can only name a network class of ``medgen.networks`` or the allow-list;
* case ids from file names, folder names, CSV columns or DICOM tags can never write outside the
  output folder (``../`` and shell metacharacters in names, through the preprocess and segment-mr
  batches).
"""

from __future__ import annotations

import ast
import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from medgen.cli import main
from medgen.data.phantoms import make_phantom
from medgen.io.dicom_write import write_dicom_series
from medgen.io.volume import Volume
from medgen.io.writers import write_volume

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(REPO / "medgen").rglob("*.py"), *(REPO / "pipelines").rglob("*.py")])  # what pip installs
UNPICKLERS = {("pickle", "load"), ("pickle", "loads"), ("dill", "load"), ("dill", "loads"), ("marshal", "loads"),
              ("cloudpickle", "load"), ("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"),
              ("yaml", "load_all"), ("yaml", "unsafe_load_all"), ("os", "system"), ("os", "popen")}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword_is(call: ast.Call, name: str, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    functions = {}  # node -> enclosing function name
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for child in ast.walk(fn):
                functions.setdefault(child, fn.name)  # outermost first; inner defs overwrite below
    for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        for child in ast.walk(fn):
            functions[child] = fn.name
    for node in ast.walk(tree):
        where = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            parts = tuple(name.rsplit(".", 1)) if "." in name else ("", name)
            if name in {"eval", "exec", "compile", "__import__"}:
                found.append(f"{where}: {name}()")
            elif parts in UNPICKLERS:
                found.append(f"{where}: {name}()")
            elif name == "torch.load" and not _keyword_is(node, "weights_only", True):
                found.append(f"{where}: torch.load without weights_only=True")
            elif name.endswith(("np.load", "numpy.load")) and _keyword_is(node, "allow_pickle", True):
                found.append(f"{where}: numpy.load(allow_pickle=True)")
            elif name.startswith("subprocess.") and _keyword_is(node, "shell", True):
                found.append(f"{where}: {name}(shell=True)")
        if isinstance(node, (ast.Name, ast.Attribute)) and _dotted(node).endswith("ConfigParser") \
                and functions.get(node) != "_build_trusted":
            if not isinstance(node, ast.Attribute) or _dotted(node).split(".")[-1] == "ConfigParser":
                found.append(f"{where}: MONAI ConfigParser outside _build_trusted (the --trust-bundle path)")
        if isinstance(node, ast.ImportFrom) and any(a.name == "ConfigParser" for a in node.names) \
                and functions.get(node) != "_build_trusted":
            found.append(f"{where}: imports ConfigParser outside _build_trusted")
    return found


def test_sources_never_evaluate_unpickle_or_shell_out():
    assert len(SOURCES) > 30
    problems = [v for path in SOURCES for v in _violations(path)]
    assert not problems, "\n".join(problems)


def test_the_scanner_catches_what_it_looks_for(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text("import torch, yaml, pickle\nfrom monai.bundle import ConfigParser\n"
                   "eval('1')\ntorch.load('x')\ntorch.load('x', weights_only=False)\nyaml.load('a')\n"
                   "pickle.loads(b'')\ntorch.load('x', weights_only=True)\nyaml.safe_load('a')\n")
    found = _violations(bad)
    assert len(found) == 6, found  # ConfigParser import, eval, 2x torch.load, yaml.load, pickle.loads


def test_a_bundle_cannot_name_a_callable_that_is_not_a_network(tmp_path, capsys):
    from medgen.errors import ModelError
    from medgen.networks.registry import build_network
    for name in ("medgen.networks.registry:importlib", "medgen.networks.registry:build_network",
                 "medgen.networks.resnet_generator:torch", "os:system", "builtins:eval"):
        with pytest.raises(ModelError):
            build_network(name, {})
    # through the command line: a translator bundle whose medgen.json names another callable
    from medgen.models.bundle import BundleSpec, save_bundle
    from medgen.networks.resnet_generator import ResnetGenerator
    kwargs = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "features": 4, "n_down": 1, "n_blocks": 0}
    from medgen.transforms.recipes import PreprocessConfig
    spec = BundleSpec(kind="translator", network={"name": "medgen.networks.resnet_generator:ResnetGenerator",
                                                  "kwargs": kwargs},
                      preprocess=PreprocessConfig(modality="mr", spacing=[8.0, 8.0, 10.0]).model_dump(mode="json"),
                      extra={"spatial_dims": 2, "context": 1, "ct_window": [-1000.0, 1000.0]})
    bundle = save_bundle(tmp_path / "bundle", spec, ResnetGenerator(**kwargs))
    meta = bundle / "medgen.json"
    text = meta.read_text().replace("medgen.networks.resnet_generator:ResnetGenerator", "medgen.networks.registry:importlib")
    meta.write_text(text)
    p = make_phantom(0, shape=(24, 24, 8), spacing=(8.0, 8.0, 10.0))
    mr = write_volume(Volume(p.mr, p.affine), tmp_path / "mr.nii.gz")
    capsys.readouterr()
    assert main(["translate", "-i", str(mr), "-o", str(tmp_path / "out" / "sct.nii.gz"), "-m", str(bundle),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "importlib" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "sct.nii.gz").exists()


# ---------------------------------------------------------------------------------------------
# output confinement
# ---------------------------------------------------------------------------------------------
MALICIOUS_FILE_NAMES = ["..evil.nii.gz", "$(touch PWNED);x.nii.gz", "-rf --no-preserve-root.nii.gz",
                        "a b\tc.nii.gz", "....nii.gz", "%2e%2e%2fenc.nii.gz"]


def _snapshot(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _assert_confined(root: Path, before: set[Path], out: Path) -> None:
    new = _snapshot(root) - before
    assert new, "the command wrote nothing"
    outside = [p for p in new if not p.resolve().is_relative_to(out.resolve())]
    assert not outside, outside
    assert not list(root.parent.glob("*escaped*")) and not list(root.rglob("PWNED"))


@pytest.fixture
def jail(tmp_path) -> Path:
    """Inputs and outputs live two levels down, so '../../x' escapes would still land inside tmp_path."""
    root = tmp_path / "a" / "b"
    root.mkdir(parents=True)
    return root


def test_preprocess_batch_keeps_hostile_names_inside_the_output_folder(jail, tmp_path):
    src = jail / "in"
    p = make_phantom(0, shape=(24, 24, 8), spacing=(8.0, 8.0, 10.0))
    for name in MALICIOUS_FILE_NAMES:
        write_volume(Volume(p.ct, p.affine), src / name)
    # DICOM tags holding path fragments never become names
    write_dicom_series(Volume(p.ct, p.affine), src / "dicom_case", patient_id="../../escaped_pid",
                       series_description="../../escaped_desc")
    # a CSV case list with hostile case ids
    listing = jail / "cases.csv"
    with open(listing, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", "source_path"])
        writer.writerow(["../../escaped_csv", str(src / "..evil.nii.gz")])
        writer.writerow(["/abs/escaped_abs", str(src / "....nii.gz")])
    out = jail / "out"
    before = _snapshot(tmp_path)
    assert main(["preprocess", *[str(src / n) for n in MALICIOUS_FILE_NAMES], str(src / "dicom_case"), str(listing),
                 "-o", str(out), "--modality", "ct", "--no-mlflow", "-q"]) == 0
    _assert_confined(tmp_path, before, out)
    with open(out / "manifest.csv", newline="") as fh:
        ids = [row["case_id"] for row in csv.DictReader(fh)]
    assert len(ids) == len(MALICIOUS_FILE_NAMES) + 3 and all("/" not in i and not i.startswith(".") for i in ids)


class _Threshold(torch.nn.Module):
    def forward(self, x):
        return torch.cat([torch.zeros_like(x), x * 50.0], dim=1)


def test_segment_mr_batch_keeps_hostile_names_inside_the_output_folder(jail, tmp_path):
    src = jail / "in"
    p = make_phantom(1, shape=(24, 24, 8), spacing=(8.0, 8.0, 10.0))
    for name in MALICIOUS_FILE_NAMES[:3]:
        write_volume(Volume(p.mr, p.affine), src / name)
    # a manifest (as written by medgen preprocess) whose case ids try to escape
    manifest = jail / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", "status", "output_path"])
        writer.writerow(["../../escaped_manifest", "ok", str(src / MALICIOUS_FILE_NAMES[0])])
        writer.writerow(["/tmp/escaped_abs", "ok", str(src / MALICIOUS_FILE_NAMES[1])])
    model = jail / "oracle.ts"
    torch.jit.script(_Threshold()).save(str(model))
    Path(f"{model}.yaml").write_text(yaml.safe_dump({"spacing": None, "hu_window": [-1000, 1000],
                                                     "patch_size": [16, 16, 8],
                                                     "label_names": {0: "background", 1: "bright"}}))
    out = jail / "masks"
    before = _snapshot(tmp_path)
    assert main(["segment-mr", "-q", "-i", str(src), str(manifest), "-o", str(out), "--translator", "none",
                 "--segmenter", str(model), "--device", "cpu", "--precision", "fp32", "--qc"]) == 0
    _assert_confined(tmp_path, before, out)
    summary = json.loads((out / "segment_mr_summary.json").read_text())
    # 4: "..evil.nii.gz" is a hidden (dot) file, never collected from a folder, but the manifest names it
    assert summary["ok"] == 4 and all("/" not in c["case_id"] for c in summary["cases"])
