"""The HTML report: metrics, figures and provenance in one self-contained file, checked in Chromium."""

import base64
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from biocnn.checkpoint import provenance, save_model  # noqa: E402
from biocnn.models import build_model  # noqa: E402
from biocnn.report import build_report, check_in_browser, find_chromium  # noqa: E402

SPEC = {"name": "classifier", "spatial_dims": 2, "in_channels": 1, "channels": [4]}


def _results(tmp_path):
    results = tmp_path / "results"
    report_dir = results / "mammo" / "report"
    report_dir.mkdir(parents=True)
    (report_dir / "summary.json").write_text(
        json.dumps(
            {
                "auc": 0.931,
                "images": 40,
                "methods": {"mc_dropout": {"dice": 0.8, "ece": 0.05}, "tta": {"dice": 0.79, "ece": 0.07}},
            }
        )
    )
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [0, 1])
    fig.savefig(report_dir / "roc_curve.png")
    plt.close(fig)
    (report_dir / "figures.json").write_text(json.dumps({"roc_curve.png": "ROC curve on held-out exams"}))
    data = tmp_path / "train.csv"
    data.write_text("path,label\n")
    save_model(results / "mammo" / "model", build_model(SPEC), {"model": SPEC, "provenance": provenance(11, [data])})
    (results / "environment.json").write_text(json.dumps({"device": "cpu"}))
    return results


def test_report_embeds_metrics_figures_and_provenance(tmp_path):
    results = _results(tmp_path)
    out = build_report(results, tmp_path / "report.html")
    page = out.read_text()
    assert "Mammography" in page and "0.931" in page
    assert "<th>mc_dropout</th>" in page and "<th>ece</th>" in page  # method x metric table
    assert "ROC curve on held-out exams" in page
    src = page.split('src="data:image/png;base64,', 1)[1].split('"', 1)[0]
    assert base64.b64decode(src)[:8] == b"\x89PNG\r\n\x1a\n"  # the image is inside the file
    assert "seed 11" in page and "torch" in page  # provenance of the model directory
    assert 'src="http' not in page and 'href="http' not in page  # self-contained


def test_missing_task_outputs_are_shown_not_hidden(tmp_path):
    results = _results(tmp_path)
    page = build_report(results, tmp_path / "r.html", tasks=["mammo", "segment"]).read_text()
    assert "No report outputs" in page


@pytest.mark.skipif(find_chromium() is None, reason="Chromium not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium_with_all_images(tmp_path):
    results = _results(tmp_path)
    report = build_report(results, tmp_path / "report.html")
    counts = check_in_browser(report, tmp_path / "shot.png", height=1200)
    assert counts == {"images": 1, "broken_images": 0}
    assert (tmp_path / "shot.png").read_bytes()[:4] == b"\x89PNG"
    # a broken image is detected
    page = report.read_text().replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1)
    report.write_text(page)
    assert check_in_browser(report, tmp_path / "shot2.png", height=800)["broken_images"] == 1
