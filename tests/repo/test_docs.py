"""Every bash / python block of README.md, docs/*.md, benchmarks/README.md and datasets/README.md
runs in CI, or says why not; every relative link in them resolves inside the repository.

Markers: the line above a fenced ``bash`` / ``python`` block (blank lines between allowed) is one of

- ``<!-- ci: run -->``: run it (python: in a subprocess; bash: with ``bash -e``), after the
  substitutions below, in a workspace shared by every block of the same file, in file order (so
  a training's OUTPUT_DIR serves the ``--eval-only``, ``evaluate_results`` and demo blocks after it);
- ``<!-- ci: continue -->``: a python block that goes on from the previous one (run as one program);
- ``<!-- ci: file: NAME -->``: not run; written into the workspace as ``NAME`` for later blocks;
- ``<!-- ci: skip: REASON -->``: not run; the reason says why (and names the test that runs a
  shrunk variant, as ``tests/FILE.py::NAME``, where there is one: that test must exist).

A block without a marker fails :func:`test_every_doc_block_is_marked`.

The workspace: ``configs``, ``tools``, ``examples`` and ``datasets`` linked from the repository,
``python`` on PATH is this interpreter, ``DETECTRON2_DATASETS`` points at the real-format fixtures
(``lt_detectron.utils.testing.make_fixtures``). Before the blocks run, one shrunk training of
``configs/lt_shapes/faster_rcnn_tiny_eqlv2.yaml`` stands in for ``bash tools/demo.sh eqlv2``, whose
model the plotting and demo blocks read from its OUTPUT_DIR.

Substitutions (:data:`SUBSTITUTIONS`, then :func:`shrink`), documented here as the test's contract:

- ``/data/mydata/annotations/{train,val}.json`` and ``/data/mydata/images``: a 3-class LVIS-format
  json made from a few lt_shapes images (the user guide's ``NUM_CLASSES 3`` data);
- ``/data/mine/lvis_v1_{train,val}.json``, ``/data/mine/coco``, ``/data/weights/R-50.pkl``: the
  real-format LVIS v1 fixtures, their image root and the random-weight R-50;
- ``path/to/model_0000999.pth``: the stand-in training's ``model_final.pth``;
- ``.venv/bin/python``: ``python``; ``--iters 100``: ``--iters 2``;
- every ``tools/train_net.py`` / ``train_mydata.py`` command gets ``--smoke`` (2 iterations, small
  inputs: ``lt_detectron/config_smoke.py``); a ``train_mydata.py`` command gets the user guide's
  dataset options (``DATASETS.*``, ``NUM_CLASSES 3``) in place of its ``...`` / ``--config-file ...``.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from tests._data import ROOT

DOCS = (
    ["README.md"]
    + sorted(
        os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md")
    )
    + [os.path.join("benchmarks", "README.md"), os.path.join("datasets", "README.md")]
)
LANGS = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python", "py": "python"}
FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)")
MARKER = re.compile(r"^\s*<!--\s*ci:\s*(run|continue|file|skip)\s*(?::\s*(.*?))?\s*-->\s*$")
TEST_REF = re.compile(r"tests/((?:\w+/)*\w+\.py)::(\w+)")

MYDATA_OPTS = (
    "DATASETS.TRAIN \"('mydata_train',)\" DATASETS.TEST \"('mydata_val',)\" "
    "MODEL.ROI_HEADS.NUM_CLASSES 3"
)
STAND_IN = "output/lt_shapes/faster_rcnn_tiny_eqlv2"


def doc_blocks(path):
    """``[(line, lang, marker, argument, code)]`` of every fenced block of a markdown file (lang
    ``None`` for other languages; marker ``None`` when there is none)."""
    with open(os.path.join(ROOT, path)) as f:
        lines = f.read().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, start = len(m.group(1)), i
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith("```"):
            j += 1
        code = "\n".join(ln[indent:] for ln in lines[i + 1 : j]) + "\n"
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        mk = MARKER.match(lines[k]) if k >= 0 else None
        marker, arg = (mk.group(1), mk.group(2)) if mk else (None, None)
        out.append((start + 1, LANGS.get(m.group(2).lower()), marker, arg, code))
        i = j + 1
    return out


def test_every_doc_block_is_marked():
    """Each bash / python block of the files in :data:`DOCS` is marked run / continue / file, or
    skip with a reason; a test a skip reason names exists."""
    problems, counted = [], 0
    for doc in DOCS:
        prev_lang = None
        for line, lang, marker, arg, _ in doc_blocks(doc):
            if lang is None:
                continue
            counted += 1
            where = "%s:%d" % (doc, line)
            if marker is None:
                problems.append(
                    "%s: no <!-- ci: run --> / <!-- ci: skip: REASON --> marker" % where
                )
            elif marker == "skip" and not (arg or "").strip():
                problems.append("%s: a skip needs a reason" % where)
            elif marker == "file" and not (arg or "").strip():
                problems.append("%s: ci: file needs a file name" % where)
            elif marker == "continue" and (lang != "python" or prev_lang != "python"):
                problems.append("%s: ci: continue follows a python block only" % where)
            for fname, test in TEST_REF.findall(arg or ""):
                p = os.path.join(ROOT, "tests", fname)
                if not os.path.isfile(p) or "def %s(" % test not in open(p).read():
                    problems.append(
                        "%s: names tests/%s::%s, which does not exist" % (where, fname, test)
                    )
            prev_lang = lang
    assert counted > 20, counted  # the parser found the blocks
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------- links
LINK = re.compile(r"\]\(([^()\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


def heading_anchor(title):
    """GitHub's anchor of a markdown heading: lower case, punctuation other than ``-`` and ``_``
    dropped (backticks and commas included), spaces to ``-``."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def prose_lines(path, root=ROOT):
    """The lines of a markdown file outside fenced code blocks, with their 1-based numbers."""
    with open(os.path.join(root, path)) as f:
        lines = f.read().splitlines()
    out, fenced = [], False
    for i, ln in enumerate(lines, 1):
        if ln.strip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.append((i, ln))
    return out


def anchors(path, root=ROOT):
    """The anchors a link ``path#anchor`` may name: headings (GitHub's rule, repeated titles get
    ``-1``, ``-2``, ...) and ``<a id="...">``."""
    seen, out = {}, set()
    for _, ln in prose_lines(path, root):
        out.update(HTML_ANCHOR.findall(ln))
        m = HEADING.match(ln)
        if m:
            slug = heading_anchor(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else "%s-%d" % (slug, n))
    return out


def broken_links(doc, root=ROOT):
    """``["doc:line: target: why"]`` for every relative link of a markdown file (``[..](target)``,
    images included) that names no file or folder of the repository, points outside it, or names an
    anchor its markdown target does not have. Links with a scheme (``https:``) are not checked."""
    problems = []
    for line, text in prose_lines(doc, root):
        for target in LINK.findall(re.sub(r"`[^`]*`", "", text)):
            if re.match(r"^[a-zA-Z][\w+.-]*:", target):
                continue
            path, _, anchor = target.partition("#")
            full = (
                os.path.join(root, doc)
                if not path
                else os.path.normpath(os.path.join(root, os.path.dirname(doc), path))
            )
            where = "%s:%d: %s" % (doc, line, target)
            if os.path.isabs(path) or os.path.relpath(full, root).startswith(os.pardir):
                problems.append("%s: points outside the repository" % where)
            elif not os.path.exists(full):
                problems.append("%s: no such file or folder" % where)
            elif anchor and full.endswith(".md"):
                if anchor not in anchors(os.path.relpath(full, root), root):
                    problems.append("%s: no heading or <a id> with this anchor" % where)
    return problems


def test_every_relative_doc_link_resolves():
    """Every relative link in README.md, docs/*.md, benchmarks/README.md and datasets/README.md
    names a file or folder of the repository (and, for a markdown file, an anchor it has)."""
    counted = sum(len(LINK.findall(text)) for doc in DOCS for _, text in prose_lines(doc))
    assert counted > 50, counted  # the parser found the links
    problems = [p for doc in DOCS for p in broken_links(doc)]
    assert not problems, "\n".join(problems)


def test_link_checker_reports_a_missing_file_an_outside_path_and_a_wrong_anchor(tmp_path):
    """The checker itself: a link to a missing file, one out of the repository and one to an
    anchor the target lacks are each reported; a good file link and a good anchor are not."""
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "guide.md").write_text('## 1. Step one\n\n<a id="here"></a>text\n')
    (root / "docs" / "page.md").write_text(
        "# A title, with `code`\n\n"
        "[ok](guide.md) [ok](#a-title-with-code) [ok](guide.md#1-step-one) [ok](guide.md#here)\n"
        "[missing](no_such_file.md) [out](../../outside.md) [anchor](guide.md#no-such)\n"
        "```\n[in a code block](ignored.md)\n```\n"
    )
    problems = broken_links(os.path.join("docs", "page.md"), str(root))
    assert [p.split(": ", 2)[1] for p in problems] == [
        "no_such_file.md",
        "../../outside.md",
        "guide.md#no-such",
    ], problems


# ------------------------------------------------------------------------------------- running them
def substitute(code, data):
    for old, new in (
        ("/data/mydata/annotations/train.json", data["mydata_train"]),
        ("/data/mydata/annotations/val.json", data["mydata_val"]),
        ("/data/mydata/images", data["mydata_images"]),
        ("/data/mine/lvis_v1_train.json", data["lvis_v1_train"]),
        ("/data/mine/lvis_v1_val.json", data["lvis_v1_val"]),
        ("/data/mine/coco", data["lvis_image_root"]),
        ("/data/weights/R-50.pkl", data["r50_pkl"]),
        ("path/to/model_0000999.pth", STAND_IN + "/model_final.pth"),
        (".venv/bin/python", "python"),
        ("--iters 100", "--iters 2"),
    ):
        code = code.replace(old, new)
    return code


def shrink(command):
    """One bash command (continuation lines joined): ``--smoke`` for training / evaluation."""
    if "--smoke" not in command:
        command = re.sub(r"\b(tools/train_net\.py|train_mydata\.py)\b", r"\1 --smoke", command, 1)
    if "train_mydata.py" in command:
        command = command.replace(
            "--config-file ...", "--config-file configs/lt_shapes/faster_rcnn_tiny_eqlv2.yaml"
        )
        command = re.sub(r"\s\.\.\.(\s|$)", " ", command) + " " + MYDATA_OPTS
    return command


def bash_script(code, data):
    joined = re.sub(r"\\\n\s*", "", substitute(code, data))
    cmds = [ln for ln in joined.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return "set -euo pipefail\n" + "\n".join(shrink(c) for c in cmds) + "\n"


def _mydata(root):
    """3 lt_shapes categories, a few train / val images, one LVIS-format json each; image root =
    the lt_shapes folder (file names carry train/ or val/)."""
    from lt_detectron.data.embedded import get_lt_shapes, lt_shapes_paths

    paths = lt_shapes_paths(get_lt_shapes())
    image_root = os.path.commonpath([paths["train_images"], paths["val_images"]])
    out = {"mydata_images": image_root}
    for split, n in (("train", 24), ("val", 6)):
        data = json.load(open(paths["%s_json" % split]))
        cats = sorted(data["categories"], key=lambda c: c["id"])[:3]
        keep_c = {c["id"] for c in cats}
        folder = os.path.relpath(paths["%s_images" % split], image_root)
        imgs = []
        for im in data["images"]:
            if any(
                a["image_id"] == im["id"] and a["category_id"] in keep_c
                for a in data["annotations"]
            ):
                imgs.append(
                    dict(im, file_name=os.path.join(folder, os.path.basename(im["file_name"])))
                )
            if len(imgs) == n:
                break
        ids = {im["id"] for im in imgs}
        anns = [
            a for a in data["annotations"] if a["image_id"] in ids and a["category_id"] in keep_c
        ]
        p = os.path.join(root, "mydata_%s.json" % split)
        json.dump(dict(data, images=imgs, annotations=anns, categories=cats), open(p, "w"))
        out["mydata_%s" % split] = p
    return out


@pytest.fixture(scope="module")
def doc_data(tmp_path_factory):
    from lt_detectron.utils.testing import make_fixtures

    root = tmp_path_factory.mktemp("doc_data")
    data = dict(make_fixtures(str(root / "fixtures")))
    data.update(_mydata(str(root)))
    return data


def _workspace(tmp_path, data):
    ws = tmp_path / "ws"
    ws.mkdir()
    for name in ("configs", "tools", "examples", "datasets"):
        os.symlink(os.path.join(ROOT, name), ws / name)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    # a wrapper, not a link: a venv's interpreter finds its site-packages from its own path
    (bindir / "python").write_text('#!/bin/sh\nexec "%s" "$@"\n' % sys.executable)
    (bindir / "python").chmod(0o755)
    env = dict(
        os.environ,
        PATH="%s%s%s" % (bindir, os.pathsep, os.environ.get("PATH", "")),
        PYTHONPATH=ROOT,
        OMP_NUM_THREADS="1",
        DETECTRON2_DATASETS=data["root"],
        MPLBACKEND="Agg",
    )
    return ws, env


def _run(argv, ws, env, what):
    res = subprocess.run(argv, cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, "%s failed:\n%s\n%s" % (
        what,
        res.stdout[-3000:],
        res.stderr[-4000:],
    )
    return res


def runnable_units(doc):
    """``[(line, lang, file name, code)]`` in file order; lang "file": write ``code`` to the name."""
    units = []
    for line, lang, marker, arg, code in doc_blocks(doc):
        if lang is None or marker in (None, "skip"):
            continue
        if marker == "file":
            units.append((line, "file", arg.strip(), code))
        elif marker == "continue":
            pline, plang, _, pcode = units[-1]
            units[-1] = (pline, plang, None, pcode + code)
        else:
            units.append((line, lang, None, code))
    return units


@pytest.mark.slow
@pytest.mark.parametrize("doc", [d for d in DOCS if runnable_units(d)])
def test_doc_blocks_run(doc, doc_data, tmp_path):
    """Every run block of one markdown file, shrunk (see the module docstring), in one workspace."""
    ws, env = _workspace(tmp_path, doc_data)
    units = runnable_units(doc)
    if any(STAND_IN in substitute(code, doc_data) for _, _, _, code in units):
        cmd = "python tools/train_net.py --smoke --config-file %s.yaml DATASETS.TEST '()'" % (
            "configs/lt_shapes/faster_rcnn_tiny_eqlv2"
        )
        _run(["bash", "-c", cmd], ws, env, "the stand-in for tools/demo.sh eqlv2")
    for line, lang, name, code in units:
        where = "%s:%d" % (doc, line)
        if lang == "file":
            (ws / name).write_text(substitute(code, doc_data))
        elif lang == "python":
            _run([sys.executable, "-c", substitute(code, doc_data)], ws, env, where)
        else:
            script = bash_script(code, doc_data)
            _run(["bash", "-c", script], ws, env, "%s\n%s" % (where, script))


@pytest.mark.slow
def test_smoke_flag_runs_a_shipped_lvis_mask_rcnn_config(doc_data, tmp_path):
    """The user guide's smoke-test command (``--smoke``), as documented, on the real-format LVIS v1
    fixture registered as the user's data: 2 iterations of a shipped LVIS Mask R-CNN config on the
    CPU, then box and mask evaluation of the val images."""
    (block,) = [
        code
        for _, lang, _, _, code in doc_blocks(os.path.join("docs", "user_guide.md"))
        if lang == "bash" and "--smoke" in code
    ]
    ws, env = _workspace(tmp_path, doc_data)
    script = bash_script(block, doc_data)
    assert script.count("--smoke") == 1 and "configs/lvis_v1/" in script
    _run(["bash", "-c", script], ws, env, script)
    out = ws / re.search(r"OUTPUT_DIR (\S+)", script).group(1)
    records = [json.loads(ln) for ln in open(out / "metrics.json")]
    assert max(r["iteration"] for r in records if "total_loss" in r) == 1  # iterations 0, 1
    final = records[-1]
    assert "bbox/AP" in final and "segm/AP" in final
    with open(doc_data["lvis_v1_val"]) as f:
        val_ids = {im["id"] for im in json.load(f)["images"]}
    results = out / "inference" / "mine_val" / "lvis_instances_results.json"
    with open(results) as f:
        dets = json.load(f)
    per_image = {}
    for d in dets:
        per_image[d["image_id"]] = per_image.get(d["image_id"], 0) + 1
    assert set(per_image) <= val_ids and max(per_image.values()) <= 10  # 10 detections per image
    assert all("segmentation" in d for d in dets)
