"""report.html for a run and a sweep, opened in real headless Chromium (Playwright driving Debian's ``chromium``)
from a file:// URL with the network blocked: the page must load nothing from outside, log no error, decode every
image, show what the run wrote and escape what a model answered."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from finetune.report import fmt, write_run_report, write_sweep_report
from tests.conftest import TINY, run_cli

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
EVIL = "<script>alert(1)</script>"
SECTIONS = ("stages", "config", "data", "training", "evaluation", "export", "timings")


@pytest.fixture
def run_dir(tiny_run) -> Path:
    """The session's whole tiny run: every stage's files on disk."""
    assert (tiny_run.dir / "report.html").is_file()  # the CLI writes it at the end of every run
    return tiny_run.dir


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])  # root needs no sandbox
    yield browser
    browser.close()
    playwright.stop()


@dataclass
class Seen:
    """What the page did besides rendering: requests off file://, console errors, script errors, dialogs."""
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert (self.requests, self.errors, self.dialogs) == ([], [], [])


def open_page(browser, path: Path):
    """(page, Seen) for ``path`` loaded from file:// with everything else aborted."""
    seen = Seen()
    page = browser.new_context().new_page()

    def route(r) -> None:
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            seen.requests.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("console", lambda m: seen.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen.errors.append(str(e)))
    page.on("dialog", lambda d: (seen.dialogs.append(d.message), d.dismiss()))
    page.goto(path.resolve().as_uri())
    return page, seen


def assert_images_decoded(page, at_least: int) -> None:
    decoded = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")
    assert len(decoded) >= at_least and all(decoded), decoded
    sources = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.getAttribute('src').slice(0, 22))")
    assert all(s == "data:image/png;base64," for s in sources), sources


def row_cells(page, selector: str) -> list[dict[str, str | None]]:
    """Text and data-value of each cell of the first row matching ``selector``."""
    return page.eval_on_selector(selector,
                                 "tr => [...tr.cells].map(c => ({text: c.innerText, value: c.dataset.value ?? null}))")


def copy_files(run_dir: Path, to: Path, names: list[str]) -> None:
    """Part of a run directory: the small files a partial run would have."""
    for name in names:
        (to / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(run_dir / name, to / name)


@needs_chromium
def test_run_report(run_dir: Path, tmp_path: Path, browser):
    shutil.copytree(run_dir, tmp_path / "run")  # the shared run is only read
    run_dir = tmp_path / "run"
    report = write_run_report(run_dir)
    assert report == run_dir / "report.html"
    page, seen = open_page(browser, report)
    seen.assert_clean()
    assert page.title() == "finetune run tiny"
    for anchor in SECTIONS:
        assert page.locator(f"section#{anchor}").count() == 1, anchor
    assert_images_decoded(page, at_least=1)  # the training curves
    assert page.locator("section#stages").inner_text().count("complete") == 7
    assert "left out" in page.locator("section#stages").inner_text()  # synthesize, with the log's reason
    # The evaluation table's figures are eval.json's, shown to 6 digits and exact in data-value.
    evaluation = json.loads((run_dir / "evaluate" / "eval.json").read_text())
    for name, entry in evaluation["metrics"].items():
        cells = row_cells(page, f"section#evaluation tr:has(td:text-is('{name}'))")
        expected = [entry["base"], entry["tuned"], entry["delta"], entry.get("ratio")]
        assert [c["text"] for c in cells[2:]] == [fmt(v) for v in expected], name
        assert [float(c["value"]) if c["value"] else None for c in cells[2:]] == expected, name
    ppl = evaluation["metrics"]["perplexity"]
    verdict = "better" if ppl["delta"] < 0 else "worse"  # lower is better: coloured by the metric's direction
    assert page.locator(f"section#evaluation tr:has(td:text-is('perplexity')) td.{verdict}").count() == 1
    metrics = json.loads((run_dir / "train" / "metrics.json").read_text())
    assert fmt(metrics["train_loss"]) in page.locator("section#training").inner_text()
    samples = [json.loads(line) for line in (run_dir / "evaluate" / "samples.jsonl").read_text().splitlines()]
    assert page.locator(".sample").count() == len(samples)
    first = page.locator(".sample").first
    assert first.locator(".answer[data-model=tuned] pre").inner_text() == samples[0]["answers"]["tuned"]
    export = page.locator("section#export").inner_text()
    assert "model-f16.gguf" in export and "passed" in export
    assert "train.max_steps=4" in page.locator("section#config").inner_text()


@needs_chromium
def test_model_answers_are_text(run_dir: Path, tmp_path: Path, browser):
    """An answer, a reference and a prompt holding markup show as that text; no script runs, no dialog opens."""
    copy_files(run_dir, tmp_path, [".hydra/config.yaml", "evaluate/eval.json", "evaluate/manifest.json"])
    sample = {"location": "test.jsonl:1", "prompt": [{"role": "user", "content": '<img src=x onerror="alert(2)">'}],
              "reference": "</pre><b>bold</b>", "answers": {"base": "a & b", "tuned": EVIL},
              "finish_reason": {"base": "stop", "tuned": "length"}, "scores": {"tuned": {"rouge1": 0.5}}}
    (tmp_path / "evaluate" / "samples.jsonl").write_text(json.dumps(sample) + "\n")
    page, seen = open_page(browser, write_run_report(tmp_path))
    seen.assert_clean()
    assert page.evaluate("document.scripts.length") == 0
    assert page.locator("section#evaluation img, section#evaluation b:text-is('bold')").count() == 0
    assert page.locator(".answer[data-model=tuned] pre").inner_text() == EVIL
    assert page.locator(".answer[data-model=base] pre").inner_text() == "a & b"
    assert '<img src=x onerror="alert(2)">' in page.locator(".sample").inner_text()


@needs_chromium
def test_validate_only_run(tmp_path: Path, dataset: Path, browser):
    """A run asked for one stage: the report shows the data and names every other part as missing."""
    run_dir = tmp_path / "run"
    run_cli(*TINY, f"dataset.path={dataset}", "stages=[validate]", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    page, seen = open_page(browser, write_run_report(run_dir))
    seen.assert_clean()
    stages = page.locator("section#stages").inner_text()
    assert stages.count("not requested") == 6 and "complete" in stages
    assert "30" in page.locator("section#data table").first.inner_text()
    assert "no train/metrics.json" in page.locator("section#training").inner_text()
    assert "no evaluate/eval.json" in page.locator("section#evaluation").inner_text()
    assert "no export/parity.json" in page.locator("section#export").inner_text()
    assert page.locator("img").count() == 0


@needs_chromium
def test_failed_train(run_dir: Path, tmp_path: Path, browser):
    """A train stage that failed: its error in the header, the run failed, later stages not run."""
    copy_files(run_dir, tmp_path, [".hydra/config.yaml", ".hydra/overrides.yaml", "finetune.log",
                                   "validate/manifest.json", "validate/report.json", "validate/report.md"])
    manifest = json.loads((run_dir / "train" / "manifest.json").read_text())
    error = "RuntimeError: CUDA out of memory <tried to allocate 2 GiB>"
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "manifest.json").write_text(json.dumps({**manifest, "status": "failed", "error": error,
                                                                  "artifacts": {}}))
    page, seen = open_page(browser, write_run_report(tmp_path))
    seen.assert_clean()
    assert page.locator("h1 + p .failed").inner_text() == "failed"
    train_row = page.locator("section#stages tr:has(td:text-is('train'))").inner_text()
    assert "failed" in train_row and error in train_row
    assert page.locator("section#stages").inner_text().count("not run") == 5  # merge … publish
    assert "no train/metrics.json" in page.locator("section#training").inner_text()


@pytest.mark.quick
def test_empty_folders(tmp_path: Path):
    """Nothing on disk still gives a page that says so."""
    assert "no .hydra/config.yaml" in write_run_report(tmp_path).read_text()
    assert "no summary.json" in write_sweep_report(tmp_path).read_text()


def sweep_folder(root: Path) -> dict:
    """A sweep's summary.json and summary.png as the sweep writes them: three jobs, the second failed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    jobs = ["0_method.r=8,train.lr=0.0001", "1_method.r=16,train.lr=0.0001", "2_method.r=8,train.lr=0.001"]
    columns = ["job", "status", "method.r", "train.lr", "eval_loss", "train_loss", "tokens_per_s", "time_s", "error"]
    rows = [
        {"job": jobs[0], "status": "complete", "best": True, "method.r": 8, "train.lr": 1e-4, "eval_loss": 1.25,
         "train_loss": 1.1, "tokens_per_s": 900.5, "time_s": 31.2, "error": None},
        {"job": jobs[1], "status": "failed", "best": False, "method.r": 16, "train.lr": 1e-4, "eval_loss": None,
         "train_loss": None, "tokens_per_s": None, "time_s": 4.0, "error": "train: out of memory <16 GiB>"},
        {"job": jobs[2], "status": "complete", "best": False, "method.r": 8, "train.lr": 1e-3, "eval_loss": 1.5,
         "train_loss": 0.9, "tokens_per_s": 950.0, "time_s": 30.0, "error": None},
    ]
    summary = {"metric": "eval_loss", "direction": "minimize", "best_job": jobs[0], "columns": columns, "rows": rows,
               "fixed": {"train.max_steps": 4}}
    (root / "summary.json").write_text(json.dumps(summary))
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar([0, 2], [1.25, 1.5])
    fig.savefig(root / "summary.png")
    plt.close(fig)
    for job in (jobs[0], jobs[2]):  # the failed job has no report
        (root / job).mkdir()
        (root / job / "report.html").write_text(f"<!DOCTYPE html><title>{job}</title><p>job</p>")
    return summary


@needs_chromium
def test_sweep_report(tmp_path: Path, browser):
    summary = sweep_folder(tmp_path)
    jobs = [r["job"] for r in summary["rows"]]
    page, seen = open_page(browser, write_sweep_report(tmp_path))
    seen.assert_clean()
    assert_images_decoded(page, at_least=1)
    assert "same in every job: train.max_steps=4" in page.locator("body > p").nth(1).inner_text()
    assert page.locator("tr.best").count() == 1
    assert page.locator("tr.best").get_attribute("data-job") == jobs[0]
    failed = page.locator("tr.failed")
    assert failed.count() == 1 and "train: out of memory <16 GiB>" in failed.inner_text()
    assert failed.locator("a").count() == 0  # no report to link to
    assert page.locator("tbody a").count() == 2
    page.locator(f"tr[data-job='{jobs[2]}'] a").click()  # the relative link opens the job's own report
    page.wait_for_load_state()
    assert page.title() == jobs[2]
    seen.assert_clean()
