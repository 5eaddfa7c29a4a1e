"""Report analysis on synthetic radiology reports with known truth (:mod:`dicomflow.demo.reports`).

Quality, per finding: precision and recall of positive mentions and of negations, for the rule engine
(:class:`dicomflow.search.reports.RuleEngine`) and for the keyword baseline (every wording found counts as
positive: what a search without negation handling gives). Target: >= 0.95 each for the engine.

Speed, ms per report, median (min-max) over ``--repeats`` passes over the same reports, interleaved:

* ``engine``: ``infer_icd10cm`` (sections, sentences, triggers, the InferICD10CM-shaped answer);
* ``floor``: the lexicon's one compiled regular expression over the text (finding the wordings and
  nothing else: no report analysis can do less).

The reports come from the same generator the engine was written against, so the quality figures show
that the engine handles every construction the generator uses (negated lists, pseudo-negations,
uncertainty, questions in the indication, three layouts), not how it fares on a hospital's reports.

Run: ``.venv/bin/python bench/bench_reports.py [--reports 500] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from _stats import check_repeats, interleaved, ratio, table

from dicomflow.demo.reports import NEGATIVE, POSITIVE, chest_report
from dicomflow.demo.synthetic import _chest_labels
from dicomflow.search import lexicon
from dicomflow.search.reports import RuleEngine, report_findings


def _keywords(text: str) -> dict[str, str]:
    return {m.finding.name: POSITIVE for m in lexicon.find_terms(text)}


def _scores(pairs: list[tuple[dict[str, str], dict[str, str]]], finding: str, status: str) -> tuple[float, float, int]:
    tp = sum(1 for truth, got in pairs if got.get(finding) == status and truth.get(finding) == status)
    predicted = sum(1 for _, got in pairs if got.get(finding) == status)
    actual = sum(1 for truth, _ in pairs if truth.get(finding) == status)
    return (tp / predicted if predicted else float("nan")), (tp / actual if actual else float("nan")), actual


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    repeats = check_repeats(args.repeats)
    reports = [chest_report(_chest_labels(np.random.default_rng([args.seed, 1, i])), f"bench-{i}", seed=args.seed)
               for i in range(args.reports)]
    engine = RuleEngine()
    ours = [(r.mentions, report_findings(engine.infer_icd10cm(r.text))) for r in reports]
    base = [(r.mentions, _keywords(r.text)) for r in reports]
    findings = sorted({f for r in reports for f in r.mentions})
    rows, figures = [], {}
    for finding in findings:
        row = [finding]
        for status in (POSITIVE, NEGATIVE):
            p, r, n = _scores(ours, finding, status)
            bp, br, _ = _scores(base, finding, status)
            row += [str(n), f"{p:.3f} / {r:.3f}", f"{bp:.3f} / {br:.3f}"]
            figures[f"{finding}:{status}"] = {"n": n, "precision": p, "recall": r, "keyword_precision": bp,
                                              "keyword_recall": br}
        rows.append(row)
    texts = [r.text for r in reports]
    pattern, _ = lexicon._pattern()
    speed = interleaved({"engine": lambda: [engine.infer_icd10cm(t) for t in texts],
                         "floor": lambda: [list(pattern.finditer(t)) for t in texts]}, repeats)
    per_report = {k: type(v)(tuple(x / len(texts) for x in v.values)) for k, v in speed.items()}
    if args.json:
        print(json.dumps({"quality": figures, "ms_per_report": {k: v.as_dict(4) for k, v in per_report.items()}}))
        return
    print(f"{len(reports)} synthetic reports (seed {args.seed}); precision / recall")
    print(table(["finding", "positives", "engine", "keywords", "negations", "engine", "keywords"], rows))
    print()
    print(table(["ms per report", "median (min-max)", "x floor"],
                [[k, v.text(3), f"{ratio(v, per_report['floor']):.1f}"] for k, v in per_report.items()]))


if __name__ == "__main__":
    main()
