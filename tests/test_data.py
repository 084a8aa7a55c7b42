"""Tests of dgm.data's loaders: real data where it is installed, tiny fake files everywhere else."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import image_dataset

from dgm import data
from dgm.data import files, sources
from dgm.errors import DgmError

TOYS = ["ring8", "grid25", "moons", "swissroll", "checkerboard"]
FASHION_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"]
HAVE_FASHION = all((sources.SYSTEM_DATA_DIR / "fashion-mnist" / f).is_file()
                   or (sources.SYSTEM_DATA_DIR / "fashion-mnist" / (f + ".gz")).is_file() for f in FASHION_FILES)
needs_fashion = pytest.mark.skipif(not HAVE_FASHION, reason="apt-get install dataset-fashion-mnist")


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty $DGM_DATA, with HOME and the system directory moved to empty places too."""
    for folder in ("dgm-data", "home", "system"):
        (tmp_path / folder).mkdir()
    monkeypatch.setenv("DGM_DATA", str(tmp_path / "dgm-data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIR", tmp_path / "system")
    return tmp_path / "dgm-data"


def check_representations(ds: data.Dataset, n: int = 256) -> None:
    """Every representation of the discrete ``ds`` has the documented dtype and value range."""
    L = ds.spec.levels
    for rep in data.REPRESENTATIONS:
        x = ds.with_representation(rep).tensors(n).x
        assert x.shape == (min(n, len(ds)), *ds.spec.shape)
        if rep in ("levels", "continuous"):  # the levels themselves, as integers or floats
            assert x.dtype == (torch.int64 if rep == "levels" else torch.float32)
            assert x.min() >= 0 and x.max() <= L - 1 and torch.equal(x, x.round())
            continue
        assert x.dtype == torch.float32
        if rep == "unit":
            assert 0 <= x.min() and x.max() <= 1
        elif rep == "signed":
            assert -1 <= x.min() and x.max() <= 1
        elif rep == "dequantized":
            assert 0 <= x.min() and x.max() < 1
        else:
            assert set(x.unique().tolist()) <= {0.0, 1.0}


# --- fake files ----------------------------------------------------------------------------------
def idx_bytes(a: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, a.ndim]) + np.array(a.shape, dtype=">u4").tobytes()
    return header + a.astype(np.uint8).tobytes()


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for kind, a in (("images-idx3", images), ("labels-idx1", labels)):
        path = folder / f"{prefix}-{kind}-ubyte"
        if gz:
            path.with_name(path.name + ".gz").write_bytes(gzip.compress(idx_bytes(a)))
        else:
            path.write_bytes(idx_bytes(a))


def write_pngs(folder: Path, n: int, mode: str = "RGB", size: tuple[int, int] = (12, 10), seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"{i:03d}.png")


# --- the registry -------------------------------------------------------------------------------
def test_list_datasets_names_everything_once():
    names = [name for name, _ in data.list_datasets()]
    assert set(names) >= {"fashion-mnist", "mnist", "cifar10", "digits", *TOYS, "folder:PATH", "npz:PATH"}
    assert len(names) == len(set(names))
    assert all(desc and "\n" not in desc for _, desc in data.list_datasets())


def test_default_representation():
    for name in ["fashion-mnist", "mnist", "cifar10", "digits", "folder:PATH"]:
        assert data.default_representation(name) == "unit"
    for name in TOYS:
        assert data.default_representation(name) == "continuous"
        assert data.load(name, "test").spec.representation == "continuous"
    assert data.load("digits").spec.representation == "unit"


def test_unknown_name_suggests_the_nearest():
    with pytest.raises(DgmError, match="did you mean 'fashion-mnist'"):
        data.load("fashion-mnst")
    with pytest.raises(DgmError, match="unknown split"):
        data.load("digits", "validation")  # type: ignore[arg-type]
    with pytest.raises(DgmError, match="folder:PATH"):
        data.load("folder:")
    with pytest.raises(DgmError, match="unknown data representation"):
        data.load("digits", representation="bits")


def test_size_and_channels_only_for_folders():
    assert data.load("digits", size=8, channels=1).spec.shape == (1, 8, 8)  # its own values are fine
    for kwargs in ({"size": 28}, {"channels": 3}):
        with pytest.raises(DgmError, match="folder:PATH"):
            data.load("digits", **kwargs)
    with pytest.raises(DgmError, match="folder:PATH"):
        data.load("ring8", size=2)


def test_device_and_copies():
    ds = data.load("digits", "test", device=torch.device("cpu"))
    assert ds.device == torch.device("cpu")
    ds.raw.zero_()  # the caller owns its tensors: the cached arrays are untouched
    assert data.load("digits", "test").raw.max() == 16
    with pytest.raises(DgmError, match="device"):
        data.load("digits", device="no-such-device")


# --- digits and representations ---------------------------------------------------------------
def test_digits():
    train, test = data.load("digits"), data.load("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    for ds in (train, test):
        assert ds.spec.shape == (1, 8, 8) and ds.spec.levels == 17 and ds.raw.dtype == torch.uint8
        assert ds.labels.dtype == torch.int64 and set(ds.labels.tolist()) == set(range(10))
        assert ds.raw.max() == 16 and ds.spec.class_names == [str(d) for d in range(10)]
        check_representations(ds)
    assert train.train and not test.train
    assert torch.equal(data.load("digits").raw, train.raw)  # a fixed split


def test_binarization_is_dynamic_for_training_only():
    train = data.load("digits", representation="binary-dynamic")
    test = data.load("digits", "test", representation="binary-dynamic")
    assert not torch.equal(train.tensors().x, train.tensors().x)
    assert torch.equal(test.tensors().x, test.tensors().x)
    static = train.with_representation("binary-static")
    assert torch.equal(static.tensors().x, static.tensors().x)
    deq = data.load("digits", representation="dequantized")
    assert not torch.equal(deq.tensors().x, deq.tensors().x)


# --- toys --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TOYS)
def test_toys(name: str):
    train, test = data.load(name), data.load(name, "test")
    assert (len(train), len(test)) == (50_000, 10_000)
    for ds in (train, test):
        assert ds.spec.shape == (2,) and ds.spec.levels is None and ds.raw.dtype == torch.float32
        assert torch.equal(ds.tensors(100).x, ds.raw[:100]) and torch.isfinite(ds.raw).all()
    assert not torch.equal(train.raw[:10_000], test.raw)  # different seeds per split
    assert torch.equal(data.load(name).raw, train.raw)  # fixed seeds
    with pytest.raises(DgmError, match="continuous"):
        data.load(name, representation="binary-dynamic")


@pytest.mark.parametrize("name, n_modes, std", [("ring8", 8, 0.01), ("grid25", 25, 0.05)])
def test_mixture_points_lie_near_their_modes(name: str, n_modes: int, std: float):
    ds = data.load(name)
    modes = torch.tensor(ds.spec.extras["modes"])
    assert modes.shape == (n_modes, 2) and ds.spec.extras["mode_std"] == std
    assert ds.spec.num_classes == n_modes and set(ds.labels.tolist()) == set(range(n_modes))
    assert (ds.raw - modes[ds.labels]).abs().max() < 5 * std  # per coordinate
    if name == "ring8":
        assert torch.allclose(modes.norm(dim=1), torch.ones(8))
    else:
        assert set(modes.flatten().tolist()) == {-4.0, -2.0, 0.0, 2.0, 4.0}
    data.DataSpec.from_json(ds.spec.to_json())  # the extras are plain JSON


def test_checkerboard_fills_alternate_cells():
    x = data.load("checkerboard").raw
    assert x.min() >= -4 and x.max() < 4
    cells = torch.floor(x / 2).long()  # 4x4 cells of side 2
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()
    assert len({tuple(c) for c in cells.tolist()}) == 8


# --- missing data ------------------------------------------------------------------------------
@pytest.mark.parametrize("name, how", [
    ("fashion-mnist", "apt-get install dataset-fashion-mnist"),
    ("mnist", "yann.lecun.com"),
    ("cifar10", "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"),
])
def test_missing_data_lists_the_places(data_dir: Path, tmp_path: Path, name: str, how: str):
    with pytest.raises(DgmError) as err:
        data.load(name)
    message = str(err.value)
    for place in (data_dir / name, tmp_path / "home" / ".cache" / "dgm" / name, tmp_path / "system" / name):
        assert str(place) in message
    assert how in message and "\n" not in message
    if name == "cifar10":
        assert str(data_dir / name / "cifar-10-batches-bin") in message


# --- IDX ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_idx_files(data_dir: Path, gz: bool):
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (3, 28, 28)), "t10k": rng.integers(0, 256, (2, 28, 28))}
    labels = {"train": np.array([1, 0, 9]), "t10k": np.array([4, 2])}
    for prefix in images:
        write_idx(data_dir / "mnist", prefix, images[prefix], labels[prefix], gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = data.load("mnist", split)
        assert ds.spec.shape == (1, 28, 28) and ds.spec.levels == 256 and ds.raw.dtype == torch.uint8
        assert np.array_equal(ds.raw[:, 0].numpy(), images[prefix])
        assert ds.labels.tolist() == labels[prefix].tolist()
        assert ds.spec.class_names == [str(d) for d in range(10)] and ds.spec.num_classes == 10
        check_representations(ds)


@pytest.mark.parametrize("corrupt", ["magic", "truncated", "gzip"])
def test_corrupt_idx_file(data_dir: Path, corrupt: str):
    folder = data_dir / "mnist"
    write_idx(folder, "train", np.zeros((3, 28, 28)), np.zeros(3), gz=False)
    path = folder / "train-images-idx3-ubyte"
    content = path.read_bytes()
    if corrupt == "magic":
        path.write_bytes(b"\x08\x03" + content[2:])
    elif corrupt == "truncated":
        path.write_bytes(content[:-100])
    else:
        path.unlink()
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(content)[:-10])  # cut inside the data
    with pytest.raises(DgmError, match=str(path)):
        data.load("mnist")


@needs_fashion
def test_fashion_mnist(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("DGM_DATA", raising=False)
    train, test = data.load("fashion-mnist"), data.load("fashion-mnist", "test")
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.spec.shape == (1, 28, 28) and train.spec.levels == 256 and train.raw.dtype == torch.uint8
    assert train.spec.class_names[0] == "T-shirt/top" and train.spec.class_names[9] == "Ankle boot"
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    check_representations(test)


# --- CIFAR-10 ---------------------------------------------------------------------------------
def cifar_records(labels: list[int]) -> bytes:
    # pixel values encode (record, channel) so that the CHW order can be checked
    return b"".join(bytes([y]) + bytes([10 * i + c for c in range(3) for _ in range(1024)])
                    for i, y in enumerate(labels))


def test_cifar10_binary(data_dir: Path):
    folder = data_dir / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        (folder / f"data_batch_{i}.bin").write_bytes(cifar_records([i, 0]))
    (folder / "test_batch.bin").write_bytes(cifar_records([7, 8, 9]))
    train, test = data.load("cifar10"), data.load("cifar10", "test")
    assert (len(train), len(test)) == (10, 3)
    assert train.labels.tolist() == [1, 0, 2, 0, 3, 0, 4, 0, 5, 0] and test.labels.tolist() == [7, 8, 9]
    assert test.spec.shape == (3, 32, 32) and test.spec.class_names[0] == "airplane"
    assert test.raw[2, :, 5, 7].tolist() == [20, 21, 22]
    check_representations(test)
    (folder / "test_batch.bin").write_bytes(cifar_records([1])[:-1])
    (data_dir / "cifar10" / "test_batch.bin").write_bytes(b"")  # the shallower place is tried first
    with pytest.raises(DgmError, match="test_batch.bin"):
        data.load("cifar10", "test")


# --- folder:PATH -------------------------------------------------------------------------------
def test_folder_with_class_subfolders(tmp_path: Path):
    write_pngs(tmp_path / "cats", 12, size=(40, 30))
    write_pngs(tmp_path / "dogs" / "big", 8, mode="L", seed=1)  # deeper: still class "dogs"
    train, test = data.load(f"folder:{tmp_path}"), data.load(f"folder:{tmp_path}", "test")
    assert (len(train), len(test)) == (18, 2)
    assert train.spec.shape == (3, 32, 32) and train.spec.levels == 256 and train.raw.dtype == torch.uint8
    assert train.spec.class_names == ["cats", "dogs"] and train.spec.num_classes == 2
    labels = torch.cat([train.labels, test.labels])
    assert torch.bincount(labels).tolist() == [12, 8]
    assert data.load(f"folder:{tmp_path}", "test").raw.equal(test.raw)  # deterministic
    check_representations(train)
    small = data.load(f"folder:{tmp_path}", size=16, channels=1)
    assert small.spec.shape == (1, 16, 16)


def test_folder_without_subfolders(tmp_path: Path):
    write_pngs(tmp_path, 10, mode="L", size=(8, 8))
    ds = data.load(f"folder:{tmp_path}", size=8)
    assert ds.labels is None and ds.spec.num_classes is None
    assert ds.spec.shape == (1, 8, 8)  # all grayscale: one channel by default
    originals = {np.asarray(Image.open(p)).tobytes() for p in tmp_path.glob("*.png")}
    assert {x[0].numpy().tobytes() for x in ds.raw} <= originals  # no resize at the native size
    assert data.load(f"folder:{tmp_path}", size=8, channels=3).spec.shape == (3, 8, 8)


def test_folder_errors(tmp_path: Path):
    with pytest.raises(DgmError, match="does not exist"):
        data.load(f"folder:{tmp_path / 'nowhere'}")
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DgmError, match=r"no PNG/JPEG images \(.png, .jpg, .jpeg\)"):
        data.load(f"folder:{tmp_path}")
    write_pngs(tmp_path, 3)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DgmError, match="broken.png"):
        data.load(f"folder:{tmp_path}")
    with pytest.raises(DgmError, match="channels"):
        data.load(f"folder:{tmp_path}", channels=2)


# --- npz:PATH ----------------------------------------------------------------------------------
def test_npz_images_nhwc_with_labels(tmp_path: Path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 6, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(20) % 4)
    name = f"npz:{tmp_path / 'd.npz'}"
    train, test = data.load(name), data.load(name, "test")
    assert (len(train), len(test)) == (18, 2)
    assert train.spec.shape == (3, 6, 5) and train.spec.levels == 256 and train.spec.num_classes == 4
    assert data.default_representation(name) == "unit" and train.spec.representation == "unit"
    index = files.holdout(20, "train")
    assert np.array_equal(train.raw.numpy(), x[index].transpose(0, 3, 1, 2))
    assert train.labels.tolist() == (index % 4).tolist()
    check_representations(train)


def test_npz_without_labels_and_other_layouts(tmp_path: Path):
    np.savez(tmp_path / "gray.npz", x=np.zeros((10, 4, 4), np.uint8))
    ds = data.load(f"npz:{tmp_path / 'gray.npz'}")
    assert ds.labels is None and ds.spec.shape == (1, 4, 4)
    np.savez(tmp_path / "nchw.npz", x=np.zeros((10, 3, 4, 4), np.uint8))
    assert data.load(f"npz:{tmp_path / 'nchw.npz'}").spec.shape == (3, 4, 4)


def test_npz_floats_with_test_split(tmp_path: Path):
    x, x_test = np.random.default_rng(0).normal(size=(2, 30, 5))
    np.savez(tmp_path / "f.npz", x=x, y=np.zeros(30, np.int32), x_test=x_test[:7], y_test=np.full(7, 2))
    name = f"npz:{tmp_path / 'f.npz'}"
    train, test = data.load(name), data.load(name, "test")
    assert (len(train), len(test)) == (30, 7)
    assert train.spec.representation == "continuous" == data.default_representation(name)
    assert train.spec.levels is None and train.raw.dtype == torch.float32 and train.spec.num_classes == 3
    assert torch.allclose(test.raw, torch.from_numpy(x_test[:7]).float())
    with pytest.raises(DgmError, match="continuous"):
        data.load(name, representation="unit")


@pytest.mark.parametrize("arrays, message", [
    ({"images": np.zeros((4, 2), np.float32)}, "no array 'x'"),
    ({"x": np.zeros((4, 2), np.int64)}, "expected uint8 images"),
    ({"x": np.zeros((4, 2), np.uint8)}, "expected uint8 images"),
    ({"x": np.zeros((4, 5, 5, 5), np.uint8)}, "no channel dimension"),
    ({"x": np.zeros((4, 2)), "y": np.zeros(3, np.int64)}, "expected 4 non-negative integer labels"),
    ({"x": np.zeros((4, 2)), "y": np.zeros(4)}, "integer labels"),
    ({"x": np.zeros((4, 2)), "x_test": np.zeros((4, 3))}, "example shape of x"),
    ({"x": np.full((4, 2), np.nan)}, "NaN"),
])
def test_bad_npz(tmp_path: Path, arrays: dict[str, np.ndarray], message: str):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DgmError, match=message):
        data.load(f"npz:{tmp_path / 'bad.npz'}")


def test_unreadable_npz(tmp_path: Path):
    with pytest.raises(DgmError, match="does not exist"):
        data.load(f"npz:{tmp_path / 'missing.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DgmError, match="junk.npz"):
        data.load(f"npz:{tmp_path / 'junk.npz'}")
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DgmError, match="objects.npz"):
        data.load(f"npz:{tmp_path / 'objects.npz'}")


def test_a_moved_split_keeps_its_fixed_binarization_without_drawing_it_again():
    data = image_dataset(n=64, representation="binary-static")
    x = data.tensors().x
    moved = data.to("cpu")
    assert moved._static is not None  # carried over: a trainer's copy does not draw 60,000 x 784 again
    assert torch.equal(moved.tensors().x, x)
