"""bioimage.io packages: export passes bioimageio.core's own test offline, and loads back as the same CellModel."""

from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pytest
import torch
import yaml

from conftest import TINY_ARCHITECTURE, load_small_set
from napari_cell_unet.cli import EXIT_ERROR, main
from napari_cell_unet.model import CellModel, ModelFileError, load_model, save_model
from napari_cell_unet.model.bioimageio import BioimageioError, export_bioimageio, from_bioimageio, run_bioimageio_test

pytestmark = pytest.mark.timeout(300)


def _pydantic_problem() -> str | None:
    try:
        import bioimageio.core  # noqa: F401
        import bioimageio.spec
        import pydantic
    except ImportError:
        return "bioimageio.core is not installed (pip install 'napari-cell-unet[bioimageio]')"
    spec = tuple(int(p) for p in bioimageio.spec.__version__.split(".")[:3])
    major_minor = tuple(int(p) for p in pydantic.VERSION.split(".")[:2])
    if spec <= (0, 5, 12) and major_minor >= (2, 14):
        return f"bioimageio.spec {bioimageio.spec.__version__} cannot validate under pydantic {pydantic.VERSION}"
    return None


def _model() -> CellModel:
    torch.manual_seed(0)
    model = CellModel.create(architecture=dict(TINY_ARCHITECTURE), name="tiny-test", cell_diameter=37.5)
    model.metadata["postprocessing"] = {"cell_threshold": 0.7, "border_threshold": 0.1, "min_size": 60}
    model.metadata["training"] = {"steps": 3, "data": ["usiigaci set1"]}
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny model as a .zip package whose test tensors come from a real Usiigaci crop."""
    model = _model()
    path = tmp_path_factory.mktemp("bioimageio") / "tiny.zip"
    export_bioimageio(model, path, image=load_small_set("set1")["image"], validate=_pydantic_problem() is None)
    return model, path


def _rdf(path):
    with zipfile.ZipFile(path) as zf:
        return yaml.safe_load(zf.read("rdf.yaml")), set(zf.namelist())


def test_package_passes_bioimageio_core_test(exported):
    problem = _pydantic_problem()
    if problem:
        pytest.skip(problem)
    _, path = exported
    summary = run_bioimageio_test(path)
    failures = [f"{d.name}: {e.msg}" for d in summary.details for e in d.errors]
    assert summary.status == "passed", failures
    tested = {d.name for d in summary.details}
    assert any("torchscript" in n.lower() for n in tested) and any("pytorch_state_dict" in n for n in tested)


def test_package_describes_our_inference(exported):
    model, path = exported
    rdf, names = _rdf(path)
    assert {"rdf.yaml", "weights.pt", "weights_torchscript.pt", "test_input.npy", "test_output.npy", "README.md",
            "cover.png"} <= names
    (inp,), (out,) = rdf["inputs"], rdf["outputs"]
    assert [a.get("id", a["type"]) for a in inp["axes"]] == ["batch", "channel", "y", "x"]
    assert inp["preprocessing"] == [{"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": 1.0,
                                                                      "max_percentile": 99.8}}]
    assert out["postprocessing"] == [{"id": "sigmoid"}]
    assert out["axes"][1]["channel_names"] == ["cell", "border"]
    arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
    assert arch["import_from"] == "napari_cell_unet.model.bioimageio_arch" and arch["callable"] == "CellUNet"
    config = rdf["config"]["napari_cell_unet"]
    assert (config["cell_diameter"], config["cell_threshold"], config["border_threshold"]) == (37.5, 0.7, 0.1)
    assert {c["doi"] for c in rdf["cite"]} == {"10.1016/j.softx.2019.02.007", "10.1038/s41592-019-0612-7"}
    with zipfile.ZipFile(path) as zf:
        test_input = np.load(zf.open("test_input.npy"))
        test_output = np.load(zf.open("test_output.npy"))
    # a real crop (raw uint16 phase-contrast intensities), and the output of our own inference path on it
    assert test_input.shape == (1, 1, 256, 256) and test_input.max() > 1000
    from napari_cell_unet.inference import predict_probabilities

    expected = predict_probabilities(test_input[0, 0], model, device="cpu", precision="fp32")
    np.testing.assert_allclose(test_output[0], expected, atol=1e-4)


def test_round_trip_restores_weights_and_metadata(exported, tmp_path):
    model, path = exported
    for source in (path, _unzipped(path, tmp_path / "folder"), tmp_path / "folder" / "rdf.yaml"):
        loaded = load_model(source)
        state, original = loaded.network.state_dict(), model.network.state_dict()
        assert state.keys() == original.keys()
        assert all(torch.equal(state[k], original[k]) for k in original)
        for key in ("name", "architecture", "normalization", "postprocessing", "cell_diameter", "training"):
            assert loaded.metadata[key] == model.metadata[key], key


def test_foreign_and_unsafe_packages_are_refused(exported, tmp_path):
    _, path = exported
    folder = _unzipped(path, tmp_path / "foreign")
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    rdf["weights"]["pytorch_state_dict"]["architecture"] = {"callable": "UNet2d", "import_from": "their.models",
                                                            "kwargs": {}}
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    with pytest.raises(BioimageioError, match="another architecture") as info:
        load_model(folder)
    assert isinstance(info.value, ModelFileError) and "\n" not in str(info.value)
    assert main(["segment", str(tmp_path), "--model", str(folder), "--output-dir", str(tmp_path / "out")]) == EXIT_ERROR

    unsafe = _unzipped(path, tmp_path / "unsafe")
    torch.save({"x": torch.zeros(1), "code": shutil.copyfile}, unsafe / "weights.pt")  # a pickled global
    with pytest.raises(BioimageioError, match="not plain tensors"):
        from_bioimageio(unsafe)
    with pytest.raises(BioimageioError, match="not a bioimage.io package"):
        from_bioimageio(tmp_path / "foreign" / "..")


def test_cli_export_exit_codes(tmp_path, capsys):
    model = _model()
    source = save_model(model, tmp_path / "tiny.safetensors")
    out = tmp_path / "pkg"
    args = ["export-bioimageio", str(source), "--output", str(out), "--no-torchscript", "--image",
            str(_set1_tif(tmp_path))]
    if _pydantic_problem():
        pytest.skip(_pydantic_problem())
    assert main(args) == 0
    assert (out / "rdf.yaml").is_file() and not (out / "weights_torchscript.pt").exists()
    assert torch.equal(load_model(out).network.state_dict()["segmentation_head.0.weight"],
                       model.network.state_dict()["segmentation_head.0.weight"])
    capsys.readouterr()
    assert main(args) == EXIT_ERROR  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(["export-bioimageio", str(tmp_path / "missing.safetensors"), "--output", str(tmp_path / "x.zip")]) \
        == EXIT_ERROR
    assert not (tmp_path / "x.zip").exists()


def _set1_tif(tmp_path):
    import tifffile

    path = tmp_path / "set1.tif"
    tifffile.imwrite(path, load_small_set("set1")["image"])
    return path


def _unzipped(path, folder):
    with zipfile.ZipFile(path) as zf:
        zf.extractall(folder)
    return folder


@pytest.mark.slow
def test_default_model_package_passes(tmp_path):
    problem = _pydantic_problem()
    if problem:
        pytest.skip(problem)
    from napari_cell_unet.model import default_model_available

    if not default_model_available():
        pytest.skip("no bundled default model")
    path = export_bioimageio(load_model(), tmp_path / "default.zip", image=load_small_set("set1")["image"])
    assert run_bioimageio_test(path, weight_format="torchscript").status == "passed"
