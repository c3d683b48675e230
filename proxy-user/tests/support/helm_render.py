"""Renders and lints a Helm chart with Helm's own Go SDK (helm-python-sdk,
installed by `cargo xtask setup`), for proxy-user/tests/helm_chart.rs.

Reads one JSON object on stdin: {"chart": DIR, "values": {...}, "name":
RELEASE, "namespace": NS}. Writes one JSON object on stdout: {"rendered":
{template path: text}, "lint": Helm's lint result, "sdk": Helm's version}.
"""

import json
import sys

import helm_python as helm


def main() -> None:
    req = json.load(sys.stdin)
    with helm.Chart.load(req["chart"]) as chart:
        rendered = chart.render(
            req["values"], name=req["name"], namespace=req["namespace"]
        )
    out = {
        "rendered": rendered,
        "lint": helm.lint(req["chart"]),
        "sdk": helm.helm_sdk_version(),
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
