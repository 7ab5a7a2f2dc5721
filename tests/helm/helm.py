"""Helm's own engine for tests/it/helm_chart.rs, through the PyPI package helm-python-sdk
(libhelm_c: Helm's Go SDK behind a C ABI). Run with the venv tests/helm/setup.sh makes.

Reads one JSON document on stdin, {"chart": PATH, "requests": [REQUEST, ...]}, and writes a JSON
list with one result per request on stdout. Every result is {"ok": true, ...} or
{"ok": false, "error": EXCEPTION CLASS, "message": HELM'S MESSAGE}. Requests ("op"):

  render     {values, release, namespace} -> manifests {template: text}, objects [{source,
             object}] (every YAML document of every template, parsed by Helm's YAML parser),
             notes (NOTES.txt). Values are checked against values.schema.json, as an install is.
  lint       {values, kube_version} -> report {messages [{severity, path, error}], errors}
             (strict: warnings count).
  metadata   {} -> chart (Chart.yaml), values (defaults), crds [{name, filename, data}].
  install    {kubeconfig, release, namespace, values, skip_crds} -> release (without the
             manifest and chart): a real `helm install` against the cluster.
  uninstall  {kubeconfig, release, namespace} -> info.
  parse_set  {set: ["key=value", ...]} -> values, as `helm --set` parses them.
"""

import json
import re
import sys

import helm_python as helm
from helm_python import _native
from helm_python.config import _opts

DOCUMENT_SEPARATOR = re.compile(r"^---[ \t]*(#.*)?$", re.MULTILINE)


def objects(manifests):
    found = []
    for source in sorted(manifests):
        if source.endswith("NOTES.txt"):
            continue
        for document in DOCUMENT_SEPARATOR.split(manifests[source]):
            if document is None or not document.strip():
                continue
            parsed = helm.values_from_yaml(document)
            if parsed:
                found.append({"source": source, "object": parsed})
    return found


def render(chart, request):
    manifests = chart.render(
        request.get("values"),
        name=request.get("release", "ddm-update-operator"),
        namespace=request.get("namespace", "default"),
        is_install=True,
    )
    notes = "".join(text for name, text in manifests.items() if name.endswith("NOTES.txt"))
    rendered = {name: text for name, text in manifests.items() if not name.endswith("NOTES.txt")}
    return {"manifests": rendered, "objects": objects(rendered), "notes": notes}


def install(path, request):
    with helm.Config(kubeconfig_path=request["kubeconfig"], namespace=request["namespace"]) as cfg:
        # helm-python-sdk's Config.install has no skip_crds argument; libhelm_c takes the option.
        payload = _native.call_string(
            "helm_install",
            cfg._raw(),
            _native.HANDLE(0),
            _native.HANDLE(0),
            path,
            request["release"],
            json.dumps(request.get("values") or {}),
            _opts(
                namespace=request["namespace"],
                timeout_seconds=request.get("timeout", 60),
                skip_crds=request.get("skip_crds") or None,
            ),
        )
    release = json.loads(payload)
    return {"release": {k: v for k, v in release.items() if k not in ("manifest", "chart", "config")}}


def uninstall(request):
    with helm.Config(kubeconfig_path=request["kubeconfig"], namespace=request["namespace"]) as cfg:
        return {"info": cfg.uninstall(request["release"], timeout=60)}


def main():
    job = json.load(sys.stdin)
    path = job["chart"]
    results = []
    with helm.Chart.load(path) as chart:
        for request in job["requests"]:
            op = request["op"]
            try:
                if op == "render":
                    result = render(chart, request)
                elif op == "lint":
                    result = {
                        "report": helm.lint(
                            path,
                            request.get("values"),
                            strict=True,
                            kube_version=request.get("kube_version"),
                        )
                    }
                elif op == "metadata":
                    result = {"chart": chart.metadata, "values": chart.values, "crds": chart.crds}
                elif op == "install":
                    result = install(path, request)
                elif op == "uninstall":
                    result = uninstall(request)
                elif op == "parse_set":
                    result = {"values": helm.parse_set_string(",".join(request["set"]))}
                else:
                    raise ValueError(f"unknown op {op!r}")
                results.append({"ok": True, **result})
            except helm.HelmError as error:
                results.append({"ok": False, "error": type(error).__name__, "message": str(error)})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
