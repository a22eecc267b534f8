"""The per-embryo report (predict --report, HTML and PNG) and the batch form
(--embryos_dir --out): the numbers shown are predict_embryo's, the HTML is
self-contained, an unreadable folder is a row with its error."""

import base64
import csv
import html.parser
import io
import json
import os
import subprocess
import types

import pytest
from PIL import Image

from blastjax import embryo_report, evaluate, main, predict, train_data
from blastjax.testing import tiny as th
from tests.helpers.layouts import write_embryo_folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  data_dir = th.build_small_dataset(str(tmp_path_factory.mktemp("data")))
  config = th.tiny_config("tiny_video", data_dir=data_dir, num_steps=4, validation_fraction=0.0)
  workdir = str(tmp_path_factory.mktemp("run"))
  main.run(config, workdir, "train")
  source = train_data.open_source(config)
  return workdir, source


class Page(html.parser.HTMLParser):
  """The images, links, and the text of the elements with an id or a class of a page."""

  def __init__(self):
    super().__init__()
    self.images, self.links, self.texts, self.rows, self._open = [], [], {}, [], []

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == "img":
      self.images.append(attrs.get("src", ""))
    for name in ("href", "src"):
      if name in attrs and tag != "img":
        self.links.append(attrs[name])
    if tag in ("script", "link", "iframe", "object"):
      self.links.append(f"<{tag}>")
    if "id" in attrs and tag != "img":
      self.texts[attrs["id"]] = ""
      self._open.append((tag, attrs["id"]))
    if attrs.get("class") == "by-hours":
      self.rows.append((float(attrs["data-hours"]), attrs["data-value"]))
    if "data-value" in attrs and "id" in attrs:
      self.texts[attrs["id"] + ":value"] = attrs["data-value"]

  def handle_data(self, data):
    for _, key in self._open:
      self.texts[key] += data

  def handle_endtag(self, tag):
    if self._open and self._open[-1][0] == tag:
      self._open.pop()


def _png(uri):
  assert uri.startswith("data:image/png;base64,")
  image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1], validate=True)))
  image.verify()
  return image


def test_html_and_png_report_show_predict_embryos_numbers(run, tmp_path):
  workdir, source = run
  folder = write_embryo_folder(str(tmp_path), source[0])
  expected = predict.predict_embryo(workdir, folder)
  out = tmp_path / "out"
  out.mkdir()
  done = subprocess.run(th.predict_command("--workdir", workdir, "--embryo_dir", folder, "--report",
                                           f"{out}/r.html,{out}/r.png", "--explain_frames", "2"),
                        env=th.subprocess_env(), capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert f"P(blast) = {expected['prob_blast']:.4f}" in done.stdout and f"wrote {out}/r.html" in done.stdout
  page = Page()
  with open(out / "r.html", encoding="utf-8") as f:
    page.feed(f.read())
  assert page.links == []  # self-contained: nothing fetched
  assert len(page.images) == 3 and all(_png(uri).format == "PNG" for uri in page.images)  # curve + 2 frames
  assert page.texts["prob-blast"] == f"{expected['prob_blast']:.4f}"
  assert float(page.texts["prob-blast:value"]) == pytest.approx(expected["prob_blast"], abs=2e-6)
  assert [h for h, _ in page.rows] == list(expected["by_hours"])
  for (_, value), prob in zip(page.rows, expected["by_hours"].values()):
    assert float(value) == pytest.approx(prob, abs=2e-6)
  assert page.texts["decision"] == evaluate.CLASS_NAMES[int(expected["prob_blast"] >= 0.5)]
  assert page.texts["threshold"] == "0.5"
  assert page.texts["model"] == "tiny_video" and page.texts["step"] == str(expected["step"])
  assert page.texts["workdir"] == os.path.abspath(workdir)
  assert page.texts["calibration"].startswith("uncalibrated")  # no validation split: no calibration.json
  assert "test embryos" in page.texts["interval"] or page.texts["interval"].startswith("not shown")
  with Image.open(out / "r.png") as image:
    image.verify()
    assert image.format == "PNG" and image.size[0] >= 800


def test_interval_is_the_wilson_interval_of_the_test_bin(tmp_path):
  assert embryo_report.wilson_interval(5, 10) == pytest.approx([0.2366, 0.7634], abs=1e-4)
  assert embryo_report.wilson_interval(0, 10) == pytest.approx([0.0, 0.2775], abs=1e-4)
  rows = ["embryo_id,label,prob_blast,prob_blast_40h"] + [f"E{i},{int(i < 3)},0.6{i},0.1" for i in range(5)]
  (tmp_path / "predictions.csv").write_text("\n".join(rows + ["X,1,0.95,0.9"]) + "\n")
  (tmp_path / "metrics.json").write_text(json.dumps({"step": 7, "threshold": 0.3}))
  assert embryo_report.run_threshold(str(tmp_path)) == (0.3, f"{tmp_path}/metrics.json threshold")
  interval = embryo_report.TestReliability(str(tmp_path), 7).interval(0.65)
  assert (interval["blasts"], interval["n"], interval["bin"]) == (3, 5, [0.6, 0.7])
  assert [interval["low"], interval["high"]] == pytest.approx(embryo_report.wilson_interval(3, 5))
  at_40 = embryo_report.TestReliability(str(tmp_path), 7).interval(0.12, hours=40.0)
  assert (at_40["blasts"], at_40["n"]) == (3, 5)
  assert "no test embryo" in embryo_report.TestReliability(str(tmp_path), 7).interval(0.35)["reason"]
  assert "step 7" in embryo_report.TestReliability(str(tmp_path), 9).interval(0.65)["reason"]
  with pytest.raises(ValueError, match="--report 'x.pdf'"):
    embryo_report.check_report_paths(["x.pdf"])


def _flags(**values):
  base = dict(workdir=None, embryo_dir=None, embryos_dir=None, out=None, report=None, hours=None,
              checkpoint="", explain=False, explain_dir="", explain_frames=3)
  return types.SimpleNamespace(**{**base, **values})


def test_batch_writes_one_row_per_embryo_and_notes_the_unreadable(run, tmp_path, capsys):
  workdir, source = run
  embryos = tmp_path / "embryos"
  plain = write_embryo_folder(str(embryos), source[1])
  formula = write_embryo_folder(str(embryos), {**source[2], "embryo_id": "=1+2"})
  (embryos / "broken").mkdir()  # no plane folders
  out = tmp_path / "predictions.csv"
  status = embryo_report.run_from_flags(_flags(workdir=workdir, embryos_dir=str(embryos), out=str(out)))
  assert status == 0
  assert f"wrote {out}: 3 embryos, 1 failed" in capsys.readouterr().out
  with open(out, newline="") as f:
    rows = {r["embryo_id"]: r for r in csv.DictReader(f)}
  assert sorted(rows) == sorted(["'=1+2", "broken", source[1]["embryo_id"]])  # formula-like id stays text
  for key, folder in ((source[1]["embryo_id"], plain), ("'=1+2", formula)):
    expected = predict.predict_embryo(workdir, folder, hours=[])
    assert float(rows[key]["prob_blast"]) == pytest.approx(expected["prob_blast"], abs=2e-6)
    assert rows[key]["predicted"] == str(int(expected["prob_blast"] >= 0.5))
  assert rows["broken"]["prob_blast"] == "" and rows["broken"]["note"].startswith("error: ")
  assert "broken" in rows["broken"]["note"] or "plane" in rows["broken"]["note"]
  assert embryo_report.run_from_flags(_flags(workdir=workdir, embryos_dir=str(embryos))) == 2
