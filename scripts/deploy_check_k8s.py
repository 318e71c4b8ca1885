#!/usr/bin/env python3
"""Offline checks of deploy/kubernetes, run by scripts/deploy-check.sh in its venv.

1. Every built-in kind is validated against the Kubernetes JSON schemas shipped by the
   `kubernetes-validate` package (strict: unknown fields are errors).
2. The ServiceMonitor (a CRD, not in those schemas) is checked by hand: apiVersion/kind, its
   selector matches the Service's labels, every endpoint names a port of the Service and scrapes
   /metrics.
3. The manifests agree with each other and with what the image needs: selectors, probes, the
   security context, the Secret references, the ConfigMap, and a termination grace period
   longer than the config's drain_timeout.

Prints one line per check and a closing "N passed, N failed"; exits 1 on any failure.
`--extract-config PATH` also writes the ConfigMap's imagegate.toml there (for check-config).
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

import yaml

import kubernetes_validate
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

# Groups whose kinds are built into Kubernetes (their schemas ship with kubernetes-validate).
BUILTIN_GROUP = re.compile(r"^(|apps|batch|policy|autoscaling|[a-z0-9.-]*\.k8s\.io)$")
SECRET_ENV = {"DATABASE_URL", "REDIS_URL", "IMAGEGATE_UPSTREAM_KEY"}


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"  ok    {name}")
        else:
            self.failed += 1
            print(f"  FAIL  {name}{': ' + detail if detail else ''}")
        return ok


def group_of(api_version: str) -> str:
    return api_version.split("/", 1)[0] if "/" in api_version else ""


def duration_secs(text: str) -> float:
    """A humantime duration as the config uses them: "300s", "5m", "1h 30m", "500ms"."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total, pos = 0.0, 0
    for m in re.finditer(r"\s*(\d+(?:\.\d+)?)\s*(ms|sec|min|s|m|h)", text):
        if m.start() != pos:
            raise ValueError(f"not a duration: {text!r}")
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f"not a duration: {text!r}")
    return total


def subset(labels: dict, of: dict) -> bool:
    return bool(labels) and all(of.get(k) == v for k, v in labels.items())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="deploy/kubernetes")
    ap.add_argument("--kubernetes-version", default="1.30.0")
    ap.add_argument("--extract-config", type=Path)
    args = ap.parse_args()

    c = Checks()
    root = Path(args.dir)
    files = sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml"))
    docs: list[tuple[str, dict]] = []
    kustomization = None
    for path in files:
        with path.open() as f:
            loaded = [d for d in yaml.safe_load_all(f) if d is not None]
        if path.name == "kustomization.yaml":
            kustomization = loaded[0]
            continue
        docs += [(path.name, d) for d in loaded]

    # --- kustomization: lists every manifest, and only existing ones ----------------------------
    print(f"kustomization ({root}/kustomization.yaml)")
    if c.check("kustomization.yaml exists", kustomization is not None):
        listed = kustomization.get("resources", [])
        on_disk = sorted({name for name, _ in docs})
        c.check("kind Kustomization", kustomization.get("kind") == "Kustomization")
        c.check(
            "resources list every manifest in the directory, and nothing else",
            sorted(listed) == on_disk,
            f"listed {sorted(listed)}, present {on_disk}",
        )

    # --- 1. schemas --------------------------------------------------------------------------
    print(f"schemas (kubernetes-validate {kubernetes_validate.__version__}, "
          f"Kubernetes {args.kubernetes_version}, strict)")
    by_kind: dict[str, list[dict]] = {}
    for name, doc in docs:
        kind, api = doc.get("kind", "?"), doc.get("apiVersion", "?")
        by_kind.setdefault(kind, []).append(doc)
        label = f"{name}: {kind} {doc.get('metadata', {}).get('name', '?')} ({api})"
        if not BUILTIN_GROUP.match(group_of(api)):
            if kind == "ServiceMonitor":
                continue  # checked below
            c.check(label, False, "a custom resource this script has no check for")
            continue
        try:
            kubernetes_validate.validate(doc, args.kubernetes_version, strict=True)
            c.check(label, True)
        except ValidationError as e:
            where = "/".join(str(p) for p in e.path)
            c.check(label, False, f"{where}: {e.message}")
        except SchemaNotFoundError as e:
            c.check(label, False, f"no schema: {e}")

    c.check("no Secret is committed (it is created with kubectl)", "Secret" not in by_kind)
    for kind in ("Deployment", "Service", "ConfigMap", "PodDisruptionBudget",
                 "HorizontalPodAutoscaler", "ServiceMonitor"):
        c.check(f"exactly one {kind}", len(by_kind.get(kind, [])) == 1,
                f"found {len(by_kind.get(kind, []))}")
    if c.failed:
        print(f"{c.passed} passed, {c.failed} failed")
        return 1

    dep = by_kind["Deployment"][0]
    svc = by_kind["Service"][0]
    cm = by_kind["ConfigMap"][0]
    pdb = by_kind["PodDisruptionBudget"][0]
    hpa = by_kind["HorizontalPodAutoscaler"][0]
    sm = by_kind["ServiceMonitor"][0]
    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"].get("labels", {})
    pod_spec = pod["spec"]
    container = next(x for x in pod_spec["containers"] if x["name"] == "imagegate")
    container_ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    svc_ports = {p.get("name"): p for p in svc["spec"].get("ports", [])}

    # --- 2. the ServiceMonitor ------------------------------------------------------------------
    print("ServiceMonitor")
    c.check("apiVersion monitoring.coreos.com/v1, kind ServiceMonitor",
            sm.get("apiVersion") == "monitoring.coreos.com/v1" and sm.get("kind") == "ServiceMonitor")
    sm_sel = sm.get("spec", {}).get("selector", {}).get("matchLabels", {})
    c.check("selector.matchLabels match the Service's labels",
            subset(sm_sel, svc["metadata"].get("labels", {})),
            f"{sm_sel} vs {svc['metadata'].get('labels')}")
    endpoints = sm.get("spec", {}).get("endpoints", [])
    c.check("has endpoints", bool(endpoints))
    for i, ep in enumerate(endpoints):
        c.check(f"endpoint {i}: port {ep.get('port')!r} is a named port of the Service",
                ep.get("port") in svc_ports, f"Service ports: {sorted(map(str, svc_ports))}")
        c.check(f"endpoint {i}: path /metrics", ep.get("path") == "/metrics", repr(ep.get("path")))
        c.check(f"endpoint {i}: scheme http", ep.get("scheme", "http") == "http")
    job_label = sm.get("spec", {}).get("jobLabel")
    if job_label:
        c.check(f"jobLabel {job_label!r} is a Service label whose value is 'imagegate' "
                "(the alerts select job=\"imagegate\")",
                svc["metadata"].get("labels", {}).get(job_label) == "imagegate")
    sm_ns = sm.get("spec", {}).get("namespaceSelector")
    c.check("no namespaceSelector (the Service's own namespace)", sm_ns in (None, {}))

    # --- 3. the manifests agree -----------------------------------------------------------------
    print("Deployment, Service, PDB, HPA, ConfigMap")
    sel = dep["spec"]["selector"].get("matchLabels", {})
    c.check("Deployment selector matches its pod labels", subset(sel, pod_labels))
    c.check("Deployment has 2 replicas", dep["spec"].get("replicas") == 2)
    c.check("Service selector matches the pods", subset(svc["spec"].get("selector", {}), pod_labels))
    for name, p in svc_ports.items():
        target = p.get("targetPort")
        c.check(f"Service port {name!r} targets a container port",
                target in container_ports or target in container_ports.values(), repr(target))
    c.check("PDB minAvailable 1, selecting the pods",
            pdb["spec"].get("minAvailable") == 1
            and subset(pdb["spec"].get("selector", {}).get("matchLabels", {}), pod_labels))
    ref = hpa["spec"]["scaleTargetRef"]
    c.check("HPA scales this Deployment",
            ref.get("kind") == "Deployment" and ref.get("name") == dep["metadata"]["name"])
    c.check("HPA scales on CPU",
            any(m.get("type") == "Resource" and m["resource"]["name"] == "cpu"
                for m in hpa["spec"].get("metrics", [])))
    c.check("HPA minReplicas >= 2", hpa["spec"].get("minReplicas", 1) >= 2)

    def probe(kind: str, path: str) -> None:
        get = container.get(kind, {}).get("httpGet", {})
        c.check(f"{kind}: httpGet {path} on a container port",
                get.get("path") == path
                and (get.get("port") in container_ports or get.get("port") in container_ports.values()),
                repr(get))

    probe("livenessProbe", "/healthz")
    probe("readinessProbe", "/readyz")

    psc = pod_spec.get("securityContext", {})
    csc = container.get("securityContext", {})
    eff = {**psc, **csc}
    c.check("runAsNonRoot, runAsUser 10001", eff.get("runAsNonRoot") is True and eff.get("runAsUser") == 10001)
    c.check("readOnlyRootFilesystem", csc.get("readOnlyRootFilesystem") is True)
    c.check("allowPrivilegeEscalation false", csc.get("allowPrivilegeEscalation") is False)
    c.check("capabilities drop ALL", csc.get("capabilities", {}).get("drop") == ["ALL"])
    res = container.get("resources", {})
    c.check("resources: cpu and memory requests and limits",
            all(k in res.get(s, {}) for s in ("requests", "limits") for k in ("cpu", "memory")))

    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    data_vol = volumes.get(mounts.get("/var/lib/imagegate", ""), {})
    c.check("/var/lib/imagegate is an emptyDir or a PVC (the only writable path)",
            "emptyDir" in data_vol or "persistentVolumeClaim" in data_vol)
    cfg_vol = volumes.get(mounts.get("/etc/imagegate", ""), {})
    cm_name = cfg_vol.get("configMap", {}).get("name")
    c.check("/etc/imagegate is this ConfigMap", cm_name == cm["metadata"]["name"], repr(cm_name))
    c.check("the ConfigMap has imagegate.toml (the image's --config path)",
            "imagegate.toml" in cm.get("data", {}))
    args_ = container.get("args") or []
    c.check("container args, if any, serve /etc/imagegate/imagegate.toml",
            not args_ or args_ == ["serve", "--config", "/etc/imagegate/imagegate.toml"], repr(args_))

    env = {e["name"]: e for e in container.get("env", [])}
    for name in sorted(SECRET_ENV):
        ref = env.get(name, {}).get("valueFrom", {}).get("secretKeyRef", {})
        c.check(f"env {name} from a secretKeyRef", bool(ref.get("name") and ref.get("key")),
                repr(env.get(name)))
    c.check("no env carries a literal value that looks like a secret",
            not any("value" in e and re.search(r"(://|sk-)", str(e["value"])) for e in env.values()))

    try:
        toml = tomllib.loads(cm["data"]["imagegate.toml"])
        c.check("imagegate.toml parses as TOML", True)
    except tomllib.TOMLDecodeError as e:
        c.check("imagegate.toml parses as TOML", False, str(e))
        toml = {}
    if args.extract_config and "imagegate.toml" in cm.get("data", {}):
        args.extract_config.write_text(cm["data"]["imagegate.toml"])
    text = cm.get("data", {}).get("imagegate.toml", "")
    used = set(re.findall(r"\$\{([A-Z0-9_]+)\}", text))
    c.check("every ${VAR} of the config is set in the container's env",
            used <= set(env), f"missing: {sorted(used - set(env))}")
    c.check("[data] url and [cluster] redis_url come from the environment",
            toml.get("data", {}).get("url") == "${DATABASE_URL}"
            and toml.get("cluster", {}).get("redis_url") == "${REDIS_URL}")
    c.check("[data] dir is the mounted volume",
            toml.get("data", {}).get("dir") == "/var/lib/imagegate")

    # SIGTERM comes after preStop; the drain must fit in what is left of the grace period.
    drain = duration_secs(toml.get("server", {}).get("drain_timeout", "300s"))
    pre = container.get("lifecycle", {}).get("preStop", {})
    pre_cmd = pre.get("exec", {}).get("command", [])
    pre_secs = float(pre_cmd[1]) if pre_cmd[:1] == ["sleep"] and len(pre_cmd) == 2 else 0.0
    pre_secs = max(pre_secs, float(pre.get("sleep", {}).get("seconds", 0)))
    grace = pod_spec.get("terminationGracePeriodSeconds", 30)
    c.check(f"terminationGracePeriodSeconds ({grace}) > preStop ({pre_secs:g} s) + "
            f"drain_timeout ({drain:g} s)", grace > pre_secs + drain)

    print(f"{c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
