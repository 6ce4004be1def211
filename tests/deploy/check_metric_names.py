"""Checks that the docs and the alert rules name exactly the metrics a running attnd exposes.

    python tests/deploy/check_metric_names.py METRICS_TEXT

METRICS_TEXT is a /metrics scrape of the real daemon (tests/deploy/entrypoint_test.sh saves one).
Findings (exit 1):
  - a family in the scrape that docs/operations.md does not explain (as `name`);
  - an attnd_* name in docs/operations.md or deploy/prometheus/attnd-alerts.yml that the daemon
    does not expose (histograms count with their _bucket, _sum and _count series);
  - a family the deploy files rely on (REQUIRED below) missing from the scrape.
"""

from __future__ import annotations

import pathlib
import re
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "operations.md"
ALERTS = REPO / "deploy" / "prometheus" / "attnd-alerts.yml"

# Used by the alert rules and the runbook.
REQUIRED = {
    "attnd_requests_total", "attnd_request_duration_seconds", "attnd_sessions", "attnd_plans",
    "attnd_buffers", "attnd_pool_pages", "attnd_pool_bytes", "attnd_bytes_in_total",
    "attnd_bytes_out_total", "attnd_backend_healthy", "attnd_info",
}
_NAME = re.compile(r"\battnd_[a-z0-9_]*[a-z0-9]\b")


def families(metrics_text: str) -> dict[str, str]:
    """name -> type, from the '# TYPE name type' lines."""
    found = {}
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            found[name] = kind
    return found


def series_names(kinds: dict[str, str]) -> set[str]:
    names = set(kinds)
    for name, kind in kinds.items():
        if kind == "histogram":
            names |= {name + "_bucket", name + "_sum", name + "_count"}
    return names


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    kinds = families(pathlib.Path(argv[1]).read_text(encoding="utf-8"))
    exposed = series_names(kinds)
    docs = DOCS.read_text(encoding="utf-8")
    problems = []
    for name in sorted(REQUIRED - set(kinds)):
        problems.append(f"/metrics lacks {name}, which the deploy files use")
    for name in sorted(kinds):
        if f"`{name}" not in docs:
            problems.append(f"{DOCS.relative_to(REPO)} does not explain {name} (as `{name}...`)")
    for path, text in ((DOCS, docs), (ALERTS, ALERTS.read_text(encoding="utf-8"))):
        # Words like attnd_<FLAG> in prose are placeholders, not metrics.
        for name in sorted(set(_NAME.findall(text))):
            if name not in exposed and not name.startswith(("attnd_kernels", "attnd_proto")):
                problems.append(f"{path.relative_to(REPO)} names {name}, which /metrics lacks")
    for problem in problems:
        print(f"check_metric_names: {problem}")
    print(f"check_metric_names: {len(kinds)} families, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
