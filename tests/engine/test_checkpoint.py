"""Checkpoints: nothing but tensors / arrays and plain types is unpickled (crafted files are refused
and run no code, whichever way they are given), detectron2's .pkl formats load, writes are
atomic, resume falls back to the newest intact checkpoint, RNG states are plain data,
MODEL.LT.REINIT_CLS re-initialises only a classifier that does not fit, and an offline
MODEL.WEIGHTS URL is a clear error."""

import logging
import os
import pickle
import random
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn as nn
from detectron2.config import get_cfg

import lt_detectron  # noqa: F401
from lt_detectron.engine import LTCheckpointer
from lt_detectron.engine.checkpoint import (
    CorruptCheckpointError,
    UnsafeCheckpointError,
    WeightsDownloadError,
    atomic_write,
    get_rng_state,
    load_checkpoint_file,
    reseed_from,
    rng_state_for_rank,
    set_rng_state,
)

from tests._data import ROOT

BASE = os.path.join(ROOT, "configs", "lt_shapes", "Base-FasterRCNN-Tiny.yaml")


class _Evil:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch %s" % self.marker,))


def _crafted_files(folder):
    """A crafted torch zip checkpoint, a crafted raw pickle named .pth, and a crafted .pkl."""
    marker = os.path.join(folder, "marker")
    zip_pth = os.path.join(folder, "crafted_zip.pth")
    torch.save({"model": {"w": torch.ones(2)}, "trainer": {"x": _Evil(marker)}}, zip_pth)
    raw_pth = os.path.join(folder, "crafted_raw.pth")
    with open(raw_pth, "wb") as f:
        pickle.dump({"model": {}, "x": _Evil(marker)}, f, protocol=2)
    pkl = os.path.join(folder, "crafted.pkl")
    with open(pkl, "wb") as f:
        pickle.dump(
            {"model": {"w": np.ones(2, np.float32)}, "__author__": _Evil(marker)}, f, protocol=2
        )
    return marker, [zip_pth, raw_pth, pkl]


class _Stateful:
    """A checkpointable with plain state."""

    def __init__(self):
        self.step = 0

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, d):
        self.step = d["step"]


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


# ---------------------------------------------------------------------------------------------
# refusing crafted files
# ---------------------------------------------------------------------------------------------


def test_crafted_files_are_refused_and_run_no_code(tmp_path):
    marker, files = _crafted_files(str(tmp_path))
    for path in files:
        with pytest.raises(UnsafeCheckpointError) as e:
            load_checkpoint_file(path)
        msg = str(e.value)
        assert "refusing to load %s" % path in msg
        assert "never runs code" in msg
        if path.endswith(".pkl"):
            assert "posix.system" in msg or "nt.system" in msg
        # as MODEL.WEIGHTS of a checkpointer (train / --eval-only without --resume)
        model = _tiny()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
            LTCheckpointer(model).resume_or_load(path, resume=False)
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k])
    assert not os.path.exists(marker)
    # the unpickler is what refuses: the same file, unpickled without restriction, does run code
    with open(files[1], "rb") as f:
        pickle.load(f)
    assert os.path.exists(marker)


def test_crafted_file_named_in_last_checkpoint_is_refused_not_skipped(tmp_path):
    (tmp_path / "crafted").mkdir()
    marker, files = _crafted_files(str(tmp_path / "crafted"))
    out = tmp_path / "run"
    out.mkdir()
    good = LTCheckpointer(_tiny(), str(out), extra=_Stateful())
    good.save("model_0000001")
    os.replace(files[0], out / "model_0000003.pth")
    (out / "last_checkpoint").write_text("model_0000003.pth")
    with pytest.raises(UnsafeCheckpointError, match="refusing to load .*model_0000003.pth"):
        LTCheckpointer(_tiny(), str(out), extra=_Stateful()).resume_or_load("", resume=True)
    assert not os.path.exists(marker)


def test_crafted_weights_refused_by_eval_only_and_plot_methods(tmp_path):
    """tools/train_net.py --eval-only and tools/plot_methods.py, in process."""
    marker, files = _crafted_files(str(tmp_path))

    from tools import plot_methods, train_net

    args = train_net.argument_parser().parse_args(
        [
            "--config-file",
            BASE,
            "--eval-only",
            "MODEL.WEIGHTS",
            files[0],
            "OUTPUT_DIR",
            str(tmp_path / "eval"),
            "DATASETS.TEST",
            "()",
        ]
    )
    with pytest.raises(UnsafeCheckpointError, match="refusing to load %s" % files[0]):
        train_net.main(args)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load %s" % files[2]):
        plot_methods.main(
            ["--config-file", BASE, "--output", str(tmp_path / "plots"), "MODEL.WEIGHTS", files[2]]
        )
    assert not os.path.exists(marker)


# ---------------------------------------------------------------------------------------------
# detectron2's .pkl formats still load
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 5])
def test_detectron2_model_zoo_pkl_loads(tmp_path, protocol):
    """``{"model": {name: ndarray}, "__author__": ..., "matching_heuristics": True}`` (the format
    of detectron2's ImageNet / model-zoo .pkl files)."""
    src = _tiny()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.arange(p.numel(), dtype=p.dtype).view_as(p))
    blobs = {k: v.numpy().copy() for k, v in src.state_dict().items()}
    path = tmp_path / "zoo.pkl"
    with open(path, "wb") as f:
        pickle.dump(
            {"model": blobs, "__author__": "MSRA", "matching_heuristics": True},
            f,
            protocol=protocol,
        )
    dst = _tiny()
    dst[0].weight.data.zero_()
    LTCheckpointer(dst).load(str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_caffe2_pkl_without_model_key_loads_into_a_resnet(tmp_path):
    """Detectron / caffe2 blobs (``{"blobs": {...}}`` or a raw dict, with ``*_momentum`` blobs):
    the names are converted as detectron2 does (``conv1_w`` -> ``stem.conv1.weight``)."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2"]
    backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 3, 7, 7)).astype(np.float32)
    s = rng.standard_normal(64).astype(np.float32)
    b2a = rng.standard_normal((64, 64, 1, 1)).astype(np.float32)
    raw = {
        "conv1_w": w,
        "conv1_w_momentum": np.zeros_like(w),
        "res_conv1_bn_s": s,
        "res2_0_branch2a_w": b2a,
    }
    for name, data in (("raw.pkl", raw), ("blobs.pkl", {"blobs": raw})):
        with open(tmp_path / name, "wb") as f:
            pickle.dump(data, f, protocol=2)
        ck = LTCheckpointer(backbone)
        loaded = ck._load_file(str(tmp_path / name))
        assert loaded["__author__"] == "Caffe2" and loaded["matching_heuristics"] is True
        assert set(loaded["model"]) == {
            "conv1_w",
            "res_conv1_bn_s",
            "res2_0_branch2a_w",
        }  # momentum dropped
        ck.load(str(tmp_path / name))
        sd = backbone.state_dict()
        assert torch.equal(sd["stem.conv1.weight"], torch.from_numpy(w))
        assert torch.equal(sd["stem.conv1.norm.weight"], torch.from_numpy(s))
        assert torch.equal(sd["res2.0.conv1.weight"], torch.from_numpy(b2a))


# ---------------------------------------------------------------------------------------------
# plain data, atomic writes, fallback
# ---------------------------------------------------------------------------------------------


def test_rng_state_is_plain_and_round_trips(tmp_path):
    state = get_rng_state()
    path = tmp_path / "rng.pth"
    torch.save(state, path)
    loaded = torch.load(path, weights_only=True)  # nothing but tensors and plain types
    draws = (
        torch.rand(3),
        np.random.rand(3),
        [random.random() for _ in range(3)],
        np.random.randn(1),
    )
    set_rng_state(loaded)
    again = (
        torch.rand(3),
        np.random.rand(3),
        [random.random() for _ in range(3)],
        np.random.randn(1),
    )
    assert torch.equal(draws[0], again[0])
    np.testing.assert_array_equal(draws[1], again[1])
    assert draws[2] == again[2]
    np.testing.assert_array_equal(draws[3], again[3])
    # a cached Gaussian (numpy's has_gauss / python's gauss_next) is state too
    for _ in range(2):  # normals are made in pairs: after one or two draws, one is cached
        if np.random.get_state()[3] == 0:
            np.random.standard_normal()
        if random.getstate()[2] is None:
            random.gauss(0, 1)
    st = get_rng_state()
    assert st["numpy"]["has_gauss"] == 1 and st["python"]["gauss_next"] is not None
    a = (np.random.standard_normal(), random.gauss(0, 1))
    set_rng_state(st)
    assert (np.random.standard_normal(), random.gauss(0, 1)) == a


def test_rng_state_for_rank():
    per = [{"numpy": {"keys": torch.arange(624), "pos": 5}, "id": r} for r in range(2)]
    assert rng_state_for_rank(per, 1, 2) == (per[1], None)
    st, note = rng_state_for_rank(per, 1, 4)
    assert st is per[1] and "rank 1 restores the saved state of rank 1" in note
    st, note = rng_state_for_rank(per, 3, 4)
    assert (
        st is None
        and "re-seeded from rank 0's saved state" in note
        and "2 process(es), this run has 4" in note
    )
    # re-seeding is deterministic and differs per rank
    saved = get_rng_state()
    draws = []
    for rank in (2, 2, 3):
        seed = reseed_from(saved, rank)
        draws.append((seed, np.random.rand(), random.random(), float(torch.rand(1))))
    assert draws[0] == draws[1] and draws[0][0] != draws[2][0] and draws[0][1:] != draws[2][1:]


def test_save_refuses_non_plain_values_and_keeps_previous_file(tmp_path):
    class Bad(_Stateful):
        def state_dict(self):
            return {"step": self.step, "arr": np.zeros(3)}

    ck = LTCheckpointer(_tiny(), str(tmp_path), extra=_Stateful())
    ck.save("model_0000001")
    before = (tmp_path / "model_0000001.pth").read_bytes()
    bad = LTCheckpointer(_tiny(), str(tmp_path), extra=Bad())
    with pytest.raises(
        TypeError, match=r"checkpoint model_0000001.pth\['extra'\]\['arr'\] is a numpy.ndarray"
    ):
        bad.save("model_0000001")
    assert (tmp_path / "model_0000001.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


def test_atomic_write_order_and_failure(tmp_path, monkeypatch):
    ck = LTCheckpointer(_tiny(), str(tmp_path), extra=_Stateful())
    ck.save("model_0000001")
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        os,
        "replace",
        lambda a, b: (events.append("replace " + os.path.basename(b)), real_replace(a, b))[1],
    )
    ck.save("model_0000002")
    # data fsync'ed then renamed, then last_checkpoint written the same way (the folder fsync'ed after each)
    assert events == [
        "fsync",
        "replace model_0000002.pth",
        "fsync",
        "fsync",
        "replace last_checkpoint",
        "fsync",
    ]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    monkeypatch.setattr(os, "replace", real_replace)
    # a write that fails half way: the previous files are intact, no temporary file is left
    before = (tmp_path / "model_0000002.pth").read_bytes()

    def broken(data, f):
        f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="No space left"):
        ck.save("model_0000002")
    assert (tmp_path / "model_0000002.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint",
        "model_0000001.pth",
        "model_0000002.pth",
    ]
    with pytest.raises(ValueError):
        atomic_write(
            str(tmp_path / "x.txt"), lambda f: (_ for _ in ()).throw(ValueError("boom")), mode="w"
        )
    assert not os.path.exists(tmp_path / "x.txt") and len(os.listdir(tmp_path)) == 3


@pytest.mark.parametrize("damage", ["truncate", "empty", "missing", "garbage"])
def test_resume_falls_back_to_newest_intact_checkpoint(tmp_path, caplog, damage):
    model, state = _tiny(), _Stateful()
    ck = LTCheckpointer(model, str(tmp_path), extra=state)
    saved = {}
    for step in (1, 3, 5):
        state.step = step
        with torch.no_grad():
            model[0].weight.fill_(float(step))
        ck.save("model_%07d" % step)
        saved[step] = model[0].weight.clone()
        os.utime(tmp_path / ("model_%07d.pth" % step), (step, step))  # mtimes in save order
    last = tmp_path / "model_0000005.pth"
    data = last.read_bytes()
    if damage == "truncate":
        last.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        last.write_bytes(b"")
    elif damage == "garbage":
        last.write_bytes(b"not a checkpoint" * 10)
    else:
        last.unlink()
    model2, state2 = _tiny(), _Stateful()
    with caplog.at_level(logging.WARNING):
        LTCheckpointer(model2, str(tmp_path), extra=state2).resume_or_load("", resume=True)
    assert state2.step == 3
    assert torch.equal(model2[0].weight, saved[3])
    text = caplog.text
    assert "Cannot resume from %s" % last in text and "model_0000003.pth" in text
    assert "Resumed from %s instead of %s" % (tmp_path / "model_0000003.pth", last) in text
    if damage != "missing":
        assert last.exists()  # the damaged file is left as it is


def test_resume_without_any_intact_checkpoint_is_a_clear_error(tmp_path):
    ck = LTCheckpointer(_tiny(), str(tmp_path), extra=_Stateful())
    ck.save("model_0000001")
    (tmp_path / "model_0000001.pth").write_bytes(b"\x00" * 10)
    with pytest.raises(
        CorruptCheckpointError,
        match=r"(?s)no intact checkpoint.*model_0000001.pth.*truncated or corrupt.*Remove .*last_checkpoint",
    ):
        LTCheckpointer(_tiny(), str(tmp_path), extra=_Stateful()).resume_or_load("", resume=True)


# ---------------------------------------------------------------------------------------------
# MODEL.WEIGHTS URL offline
# ---------------------------------------------------------------------------------------------


def test_offline_weights_url_is_a_clear_error(tmp_path, monkeypatch):
    import iopath.common.download as iopath_download

    calls = []

    def offline(url, filename=None, reporthook=None):  # what urllib raises without network
        calls.append(url)
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))  # nothing cached from earlier runs
    monkeypatch.setattr(iopath_download.request, "urlretrieve", offline)
    url = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    https = "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl"
    with pytest.raises(WeightsDownloadError) as e:
        LTCheckpointer(_tiny()).resume_or_load(url, resume=False)
    msg = str(e.value)
    assert calls == [https]  # the real iopath download path ran, up to urllib
    assert "MODEL.WEIGHTS = %r" % url in msg and https in msg
    assert "Temporary failure in name resolution" in msg
    assert "set MODEL.WEIGHTS to the local file" in msg and "*_gn_scratch_* config" in msg
    # a local path that does not exist names itself
    with pytest.raises(
        FileNotFoundError, match="checkpoint %s does not exist" % (tmp_path / "nope.pth")
    ):
        LTCheckpointer(_tiny()).load(str(tmp_path / "nope.pth"))


# ---------------------------------------------------------------------------------------------
# MODEL.LT.REINIT_CLS: only a classifier that does not fit
# ---------------------------------------------------------------------------------------------


class _Predictor(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.cls_score = nn.Linear(4, n)
        self.bbox_pred = nn.Linear(4, 8)


def test_reinit_cls_only_when_the_classifier_does_not_fit(tmp_path, caplog):
    torch.manual_seed(1)
    trained = _Predictor(7)
    torch.save({"model": trained.state_dict()}, tmp_path / "fits.pth")
    torch.save({"model": _Predictor(5).state_dict()}, tmp_path / "other.pth")
    torch.manual_seed(2)
    m = _Predictor(7)
    with caplog.at_level(logging.INFO, logger="lt_detectron.engine.checkpoint"):
        LTCheckpointer(m, reinit_cls=True).load(str(tmp_path / "fits.pth"))
    assert torch.equal(m.cls_score.weight, trained.cls_score.weight)  # loaded, not re-initialised
    assert torch.equal(m.cls_score.bias, trained.cls_score.bias)
    assert "classifier fits the model and is loaded (resuming and evaluation keep it" in caplog.text
    caplog.clear()
    init = m.cls_score.weight.clone()
    with caplog.at_level(logging.INFO, logger="lt_detectron.engine.checkpoint"):
        LTCheckpointer(m, reinit_cls=True).load(str(tmp_path / "other.pth"))
    assert torch.equal(m.cls_score.weight, init)  # the misfit layer is not loaded
    assert (
        "does not fit the model (cls_score.weight [5, 4] in the checkpoint, [7, 4] in the model"
        in caplog.text
    )
    assert "re-initialised: not loading cls_score.weight, cls_score.bias" in caplog.text


class _Reduce:
    """Pickles as ``func(*args)`` followed by a BUILD with ``state`` (what a crafted file holds)."""

    def __init__(self, func, args, state=None):
        self.r = (func, args) if state is None else (func, args, state)

    def __reduce__(self):
        return self.r


@pytest.mark.parametrize(
    "payload",
    [
        # a void dtype whose state declares an object field: arrays of it read raw bytes as pointers
        _Reduce(
            np.dtype,
            ("V8", False, True),
            (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0),
        ),
        # a float32 dtype rebuilt with the "holds objects" flag (no object dtype anywhere in the file)
        _Reduce(np.dtype, ("f4", False, False), (3, "<", None, None, None, -1, -1, 1)),
        # byte order flipped on numpy's own float32 singleton: would corrupt every later float32
        _Reduce(np.dtype, ("f4", False, False), (3, ">", None, None, None, -1, -1, 0)),
        _Reduce(bytearray, (10**12,)),  # a 1 TB allocation
    ],
    ids=[
        "void-with-object-field",
        "float32-object-flag",
        "float32-singleton-byteorder",
        "huge-bytearray",
    ],
)
def test_pkl_forged_numpy_state_is_refused_before_it_is_applied(tmp_path, payload):
    path = str(tmp_path / "forged.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": {"x": np.zeros(2, np.float32)}, "__author__": payload}, f, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match="forged.pkl"):
        load_checkpoint_file(path)
    f4 = np.dtype("f4")  # numpy's own dtype is untouched
    assert (f4.hasobject, f4.names, f4.byteorder, f4.flags) == (False, None, "=", 0)
    assert np.frombuffer(np.float32([1.5]).tobytes(), np.float32)[0] == 1.5


def test_torch_zip_with_a_refused_opcode_is_unsafe_not_corrupt(tmp_path):
    """A well-formed torch zip whose data.pkl uses an opcode weights_only refuses is a crafted file:
    an error, never skipped by the resume fallback as if it were damaged."""
    import io
    import zipfile

    buf = io.BytesIO()
    torch.save({"a": 1}, buf)
    zin = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = str(tmp_path / "crafted.pth")
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zo:
        for item in zin.infolist():
            data = zin.read(item.filename)
            zo.writestr(
                item, b"\x80\x02\x82\x01." if item.filename.endswith("data.pkl") else data
            )  # EXT1
    with pytest.raises(UnsafeCheckpointError, match="crafted.pth"):
        load_checkpoint_file(out)
